//! Shape and layout operators: resizing, depth/space rearrangements, splits, gather,
//! slices, concatenation, padding, reshape, transpose.

use super::*;

// ---------------------------------------------------------------------------------------
// Resize

fn resize(code: B, opts: Opts, out_hw: [i32; 2]) -> Tensor {
    let bytes = one(
        code,
        opts,
        vec![
            t(TT::FLOAT32, &[1, 2, 2, 1]),
            c(TT::INT32, &[2], i32s(&out_hw)),
            t(TT::FLOAT32, &[1, out_hw[0], out_hw[1], 1]),
        ],
        &[0, 1],
        &[2],
        (&[0], &[2]),
    );
    run(&bytes, vec![x4([1, 2, 2, 1], &[1.0, 2.0, 3.0, 4.0])]).remove(0)
}

/// The input [[1,2],[3,4]] is the plane v(y, x) = 1 + x + 2y, so bilinear output at source
/// coordinates (sy, sx) is exactly 1 + sx + 2 sy.
fn plane(coords: &[f32]) -> Vec<f32> {
    coords.iter().flat_map(|sy| coords.iter().map(move |sx| 1.0 + sx + 2.0 * sy)).collect()
}

#[test]
fn resize_bilinear_align_corners() {
    let o =
        opts!(ResizeBilinearOptions, tfl::ResizeBilinearOptionsArgs { align_corners: true, half_pixel_centers: false });
    let out = resize(B::RESIZE_BILINEAR, o, [4, 4]);
    // source = dst * (2-1)/(4-1)
    close(&out, &[1, 4, 4, 1], &plane(&[0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0]));
}

#[test]
fn resize_bilinear_half_pixel_centers() {
    let o =
        opts!(ResizeBilinearOptions, tfl::ResizeBilinearOptionsArgs { align_corners: false, half_pixel_centers: true });
    let out = resize(B::RESIZE_BILINEAR, o, [4, 4]);
    // source = (dst + 0.5) * 0.5 - 0.5 = -0.25, 0.25, 0.75, 1.25; TFLite clamps the two
    // neighbours to the edge, so the ends read the edge values.
    close(&out, &[1, 4, 4, 1], &plane(&[0.0, 0.25, 0.75, 1.0]));
}

#[test]
fn resize_bilinear_default_is_asymmetric() {
    let o = opts!(ResizeBilinearOptions, tfl::ResizeBilinearOptionsArgs::default());
    let out = resize(B::RESIZE_BILINEAR, o, [4, 4]);
    // source = dst * 0.5, clamped to the last row/column.
    close(&out, &[1, 4, 4, 1], &plane(&[0.0, 0.5, 1.0, 1.0]));
}

#[test]
fn resize_nearest_neighbor() {
    let nn = |align_corners, half_pixel_centers, hw| {
        let o = opts!(
            ResizeNearestNeighborOptions,
            tfl::ResizeNearestNeighborOptionsArgs { align_corners, half_pixel_centers }
        );
        resize(B::RESIZE_NEAREST_NEIGHBOR, o, hw)
    };
    // Default 2 -> 4: floor(dst * 0.5) = 0,0,1,1.
    let out = nn(false, false, [4, 4]);
    #[rustfmt::skip]
    close(&out, &[1, 4, 4, 1], &[
        1.0, 1.0, 2.0, 2.0,
        1.0, 1.0, 2.0, 2.0,
        3.0, 3.0, 4.0, 4.0,
        3.0, 3.0, 4.0, 4.0,
    ]);
    // Default 2 -> 3: floor(dst * 2/3) = 0,0,1.
    let out = nn(false, false, [3, 3]);
    close(&out, &[1, 3, 3, 1], &[1.0, 1.0, 2.0, 1.0, 1.0, 2.0, 3.0, 3.0, 4.0]);
    // Half-pixel 2 -> 3: floor((dst + 0.5) * 2/3) = 0,1,1.
    let out = nn(false, true, [3, 3]);
    close(&out, &[1, 3, 3, 1], &[1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 3.0, 4.0, 4.0]);
    // Align corners 2 -> 3: round(dst * 1/2) = 0,1,1 (half away from zero).
    let out = nn(true, false, [3, 3]);
    close(&out, &[1, 3, 3, 1], &[1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 3.0, 4.0, 4.0]);
}

// ---------------------------------------------------------------------------------------
// Data movement

/// [1,2,4,2] laid out from [1,1,2,8] = 0..16 in DCR order:
/// out[0, by, w*2+bx, c] = in[0, 0, w, (by*2+bx)*2 + c] = 8w + 4by + 2bx + c.
const D2S: [f32; 16] = [0., 1., 2., 3., 8., 9., 10., 11., 4., 5., 6., 7., 12., 13., 14., 15.];

#[test]
fn depth_to_space_dcr_order() {
    let bytes = one(
        B::DEPTH_TO_SPACE,
        opts!(DepthToSpaceOptions, tfl::DepthToSpaceOptionsArgs { block_size: 2 }),
        vec![t(TT::FLOAT32, &[1, 1, 2, 8]), t(TT::FLOAT32, &[1, 2, 4, 2])],
        &[0],
        &[1],
        (&[0], &[1]),
    );
    let out = run(&bytes, vec![x4([1, 1, 2, 8], &range(16))]);
    close(&out[0], &[1, 2, 4, 2], &D2S);
}

#[test]
fn space_to_depth_dcr_order() {
    let bytes = one(
        B::SPACE_TO_DEPTH,
        opts!(SpaceToDepthOptions, tfl::SpaceToDepthOptionsArgs { block_size: 2 }),
        vec![t(TT::FLOAT32, &[1, 2, 4, 2]), t(TT::FLOAT32, &[1, 1, 2, 8])],
        &[0],
        &[1],
        (&[0], &[1]),
    );
    let out = run(&bytes, vec![x4([1, 2, 4, 2], &D2S)]);
    close(&out[0], &[1, 1, 2, 8], &range(16));
}

#[test]
fn split_even() {
    let bytes = one(
        B::SPLIT,
        opts!(SplitOptions, tfl::SplitOptionsArgs { num_splits: 2 }),
        vec![c(TT::INT32, &[], i32s(&[1])), t(TT::FLOAT32, &[2, 4]), t(TT::FLOAT32, &[2, 2]), t(TT::FLOAT32, &[2, 2])],
        &[0, 1],
        &[2, 3],
        (&[1], &[2, 3]),
    );
    let x = tensor1(&range(8)).into_shape(&[2, 4]).unwrap();
    let out = run(&bytes, vec![x]);
    close(&out[0], &[2, 2], &[0.0, 1.0, 4.0, 5.0]);
    close(&out[1], &[2, 2], &[2.0, 3.0, 6.0, 7.0]);
}

#[test]
fn split_v_with_inferred_size() {
    let bytes = one(
        B::SPLIT_V,
        opts!(SplitVOptions, tfl::SplitVOptionsArgs { num_splits: 3 }),
        vec![
            t(TT::FLOAT32, &[1, 6]),
            c(TT::INT32, &[3], i32s(&[1, -1, 2])),
            c(TT::INT32, &[], i32s(&[-1])),
            t(TT::FLOAT32, &[1, 1]),
            t(TT::FLOAT32, &[1, 3]),
            t(TT::FLOAT32, &[1, 2]),
        ],
        &[0, 1, 2],
        &[3, 4, 5],
        (&[0], &[3, 4, 5]),
    );
    let out = run(&bytes, vec![tensor2(&[[0f32, 1.0, 2.0, 3.0, 4.0, 5.0]])]);
    close(&out[0], &[1, 1], &[0.0]);
    close(&out[1], &[1, 3], &[1.0, 2.0, 3.0]);
    close(&out[2], &[1, 2], &[4.0, 5.0]);
}

#[test]
fn gather() {
    let g = |axis: i32, out_shape: &[i32]| {
        one(
            B::GATHER,
            opts!(GatherOptions, tfl::GatherOptionsArgs { axis, batch_dims: 0 }),
            vec![t(TT::FLOAT32, &[3, 2]), c(TT::INT32, &[2], i32s(&[2, 0])), t(TT::FLOAT32, out_shape)],
            &[0, 1],
            &[2],
            (&[0], &[2]),
        )
    };
    let x = || tensor2(&[[1f32, 2.0], [3.0, 4.0], [5.0, 6.0]]);
    close(&run(&g(0, &[2, 2]), vec![x()])[0], &[2, 2], &[5.0, 6.0, 1.0, 2.0]);
    // Axis 1 with index 2 would be out of range: use [1, 0] via a second model.
    let bytes = one(
        B::GATHER,
        opts!(GatherOptions, tfl::GatherOptionsArgs { axis: 1, batch_dims: 0 }),
        vec![t(TT::FLOAT32, &[3, 2]), c(TT::INT32, &[3], i32s(&[1, 0, 1])), t(TT::FLOAT32, &[3, 3])],
        &[0, 1],
        &[2],
        (&[0], &[2]),
    );
    close(&run(&bytes, vec![x()])[0], &[3, 3], &[2.0, 1.0, 2.0, 4.0, 3.0, 4.0, 6.0, 5.0, 6.0]);
}

#[test]
fn strided_slice() {
    let ss = |begin: &[i32], end: &[i32], strides: &[i32], args: tfl::StridedSliceOptionsArgs, out: &[i32]| {
        let o = opts!(StridedSliceOptions, args);
        one(
            B::STRIDED_SLICE,
            o,
            vec![
                t(TT::FLOAT32, &[3, 4]),
                c(TT::INT32, &[2], i32s(begin)),
                c(TT::INT32, &[2], i32s(end)),
                c(TT::INT32, &[2], i32s(strides)),
                t(TT::FLOAT32, out),
            ],
            &[0, 1, 2, 3],
            &[4],
            (&[0], &[4]),
        )
    };
    let x = || tensor1(&range(12)).into_shape(&[3, 4]).unwrap();
    let bytes = ss(&[0, 1], &[3, 4], &[2, 2], Default::default(), &[2, 2]);
    close(&run(&bytes, vec![x()])[0], &[2, 2], &[1.0, 3.0, 9.0, 11.0]);
    // Row 1 (shrunk away), all columns through the end mask.
    let args = tfl::StridedSliceOptionsArgs { end_mask: 2, shrink_axis_mask: 1, ..Default::default() };
    let bytes = ss(&[1, 0], &[2, 0], &[1, 1], args, &[4]);
    close(&run(&bytes, vec![x()])[0], &[4], &[4.0, 5.0, 6.0, 7.0]);
    // Begin mask on axis 0, negative stride on axis 1: x[:2, ::-2] from the last column.
    let args = tfl::StridedSliceOptionsArgs { begin_mask: 1, ..Default::default() };
    let bytes = ss(&[2, -1], &[2, -5], &[1, -2], args, &[2, 2]);
    close(&run(&bytes, vec![x()])[0], &[2, 2], &[3.0, 1.0, 7.0, 5.0]);
}

#[test]
fn concatenation_negative_axis() {
    let bytes = one(
        B::CONCATENATION,
        opts!(ConcatenationOptions, tfl::ConcatenationOptionsArgs { axis: -1, ..Default::default() }),
        vec![t(TT::FLOAT32, &[1, 2]), c(TT::FLOAT32, &[1, 3], f32s(&[7.0, 8.0, 9.0])), t(TT::FLOAT32, &[1, 5])],
        &[0, 1],
        &[2],
        (&[0], &[2]),
    );
    close(&run(&bytes, vec![tensor2(&[[1f32, 2.0]])])[0], &[1, 5], &[1.0, 2.0, 7.0, 8.0, 9.0]);
}

#[test]
fn pad() {
    let bytes = one(
        B::PAD,
        Opts::None,
        vec![t(TT::FLOAT32, &[1, 2]), c(TT::INT32, &[2, 2], i32s(&[1, 0, 0, 2])), t(TT::FLOAT32, &[2, 4])],
        &[0, 1],
        &[2],
        (&[0], &[2]),
    );
    close(&run(&bytes, vec![tensor2(&[[1f32, 2.0]])])[0], &[2, 4], &[0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0]);
}

#[test]
fn reshape_with_shape_input_and_with_options() {
    let bytes = one(
        B::RESHAPE,
        Opts::None,
        vec![t(TT::FLOAT32, &[2, 3]), c(TT::INT32, &[2], i32s(&[3, -1])), t(TT::FLOAT32, &[3, 2])],
        &[0, 1],
        &[2],
        (&[0], &[2]),
    );
    let x = || tensor1(&range(6)).into_shape(&[2, 3]).unwrap();
    close(&run(&bytes, vec![x()])[0], &[3, 2], &range(6));
    let o = Opts::Builtin(
        tfl::BuiltinOptions::ReshapeOptions,
        Box::new(|fbb: &mut Fbb| {
            let new_shape = Some(fbb.create_vector(&[6]));
            tfl::ReshapeOptions::create(fbb, &tfl::ReshapeOptionsArgs { new_shape }).as_union_value()
        }),
    );
    let bytes = one(B::RESHAPE, o, vec![t(TT::FLOAT32, &[2, 3]), t(TT::FLOAT32, &[6])], &[0], &[1], (&[0], &[1]));
    close(&run(&bytes, vec![x()])[0], &[6], &range(6));
}

#[test]
fn transpose() {
    let bytes = one(
        B::TRANSPOSE,
        Opts::None,
        vec![t(TT::FLOAT32, &[1, 2, 3]), c(TT::INT32, &[3], i32s(&[2, 0, 1])), t(TT::FLOAT32, &[3, 1, 2])],
        &[0, 1],
        &[2],
        (&[0], &[2]),
    );
    let x = tensor1(&range(6)).into_shape(&[1, 2, 3]).unwrap();
    // out[k, 0, j] = x[0, j, k]
    close(&run(&bytes, vec![x])[0], &[3, 1, 2], &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
}
