//! Convolutions (regular, depthwise, transposed), pooling and fully connected layers.

use super::*;

#[test]
fn conv_2d_valid_two_channels_with_bias() {
    // Kernel OHWI [2,2,2,1]: channel 0 = [[1,0],[0,1]], channel 1 = [[0,1],[1,0]].
    let bytes = one(
        B::CONV_2D,
        opts!(
            Conv2DOptions,
            tfl::Conv2DOptionsArgs { padding: Padding::VALID, stride_w: 1, stride_h: 1, ..Default::default() }
        ),
        vec![
            t(TT::FLOAT32, &[1, 3, 3, 1]),
            c(TT::FLOAT32, &[2, 2, 2, 1], f32s(&[1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0])),
            c(TT::FLOAT32, &[2], f32s(&[0.0, 10.0])),
            t(TT::FLOAT32, &[1, 2, 2, 2]),
        ],
        &[0, 1, 2],
        &[3],
        (&[0], &[3]),
    );
    let x = x4([1, 3, 3, 1], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    // ch0 = x[i,j] + x[i+1,j+1]; ch1 = x[i,j+1] + x[i+1,j] + 10
    close(&run(&bytes, vec![x])[0], &[1, 2, 2, 2], &[6.0, 16.0, 8.0, 18.0, 12.0, 22.0, 14.0, 24.0]);
}

#[test]
fn conv_2d_same_with_fused_relu() {
    // 3x3 input, 2x2 kernel [[1,-1],[2,0.5]], bias -5: SAME pads one zero row/column at the
    // end (TFLite puts the odd padding after).
    let bytes = one(
        B::CONV_2D,
        opts!(
            Conv2DOptions,
            tfl::Conv2DOptionsArgs {
                padding: Padding::SAME,
                stride_w: 1,
                stride_h: 1,
                fused_activation_function: tfl::ActivationFunctionType::RELU,
                ..Default::default()
            }
        ),
        vec![
            t(TT::FLOAT32, &[1, 3, 3, 1]),
            c(TT::FLOAT32, &[1, 2, 2, 1], f32s(&[1.0, -1.0, 2.0, 0.5])),
            c(TT::FLOAT32, &[1], f32s(&[-5.0])),
            t(TT::FLOAT32, &[1, 3, 3, 1]),
        ],
        &[0, 1, 2],
        &[3],
        (&[0], &[3]),
    );
    let x = x4([1, 3, 3, 1], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    // Before RELU: [[4.5, 7, 10], [12, 14.5, 19], [-6, -6, 4]].
    close(&run(&bytes, vec![x])[0], &[1, 3, 3, 1], &[4.5, 7.0, 10.0, 12.0, 14.5, 19.0, 0.0, 0.0, 4.0]);
}

#[test]
fn depthwise_conv_2d_depth_multiplier_2() {
    // Output channel o reads input channel o / 2. Kernel [1,2,2,4] as [ky][kx][o]:
    // o0 = all ones (on c0), o1 = top-left (c0), o2 = bottom-right (c1), o3 = tl - tr (c1).
    #[rustfmt::skip]
    let k = f32s(&[
        1.0, 1.0, 0.0, 1.0,
        1.0, 0.0, 0.0, -1.0,
        1.0, 0.0, 0.0, 0.0,
        1.0, 0.0, 1.0, 0.0,
    ]);
    let bytes = one(
        B::DEPTHWISE_CONV_2D,
        opts!(
            DepthwiseConv2DOptions,
            tfl::DepthwiseConv2DOptionsArgs {
                padding: Padding::VALID,
                stride_w: 1,
                stride_h: 1,
                depth_multiplier: 2,
                ..Default::default()
            }
        ),
        vec![
            t(TT::FLOAT32, &[1, 2, 2, 2]),
            c(TT::FLOAT32, &[1, 2, 2, 4], k),
            c(TT::FLOAT32, &[4], f32s(&[0.0, 0.0, 0.0, 0.5])),
            t(TT::FLOAT32, &[1, 1, 1, 4]),
        ],
        &[0, 1, 2],
        &[3],
        (&[0], &[3]),
    );
    // c0 = [[1,2],[3,4]], c1 = [[10,20],[30,40]]
    let x = x4([1, 2, 2, 2], &[1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0]);
    close(&run(&bytes, vec![x])[0], &[1, 1, 1, 4], &[10.0, 1.0, 40.0, -9.5]);
}

#[test]
fn fully_connected_with_bias_and_relu() {
    let bytes = one(
        B::FULLY_CONNECTED,
        opts!(
            FullyConnectedOptions,
            tfl::FullyConnectedOptionsArgs {
                fused_activation_function: tfl::ActivationFunctionType::RELU,
                ..Default::default()
            }
        ),
        vec![
            t(TT::FLOAT32, &[2, 3]),
            c(TT::FLOAT32, &[2, 3], f32s(&[1.0, 0.0, -1.0, 0.5, 0.5, 0.5])),
            c(TT::FLOAT32, &[2], f32s(&[1.0, -1.0])),
            t(TT::FLOAT32, &[2, 2]),
        ],
        &[0, 1, 2],
        &[3],
        (&[0], &[3]),
    );
    let x = tensor2(&[[1f32, 2.0, 3.0], [4.0, 5.0, 6.0]]);
    // Before RELU: [[-1, 2], [-1, 6.5]].
    close(&run(&bytes, vec![x])[0], &[2, 2], &[0.0, 2.0, 0.0, 6.5]);
}

fn pool(code: B, padding: Padding, filter: i32, stride: i32, x: Tensor, out: &[i32]) -> Tensor {
    let shape: Vec<i32> = x.shape().iter().map(|d| *d as i32).collect();
    let bytes = one(
        code,
        opts!(
            Pool2DOptions,
            tfl::Pool2DOptionsArgs {
                padding,
                stride_w: stride,
                stride_h: stride,
                filter_width: filter,
                filter_height: filter,
                ..Default::default()
            }
        ),
        vec![t(TT::FLOAT32, &shape), t(TT::FLOAT32, out)],
        &[0],
        &[1],
        (&[0], &[1]),
    );
    run(&bytes, vec![x]).remove(0)
}

#[test]
fn average_pool_2d_global() {
    let x = x4([1, 2, 2, 2], &[1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0]);
    let out = pool(B::AVERAGE_POOL_2D, Padding::VALID, 2, 1, x, &[1, 1, 1, 2]);
    close(&out, &[1, 1, 1, 2], &[2.5, 25.0]);
}

#[test]
fn average_pool_2d_valid_and_same() {
    let x = || x4([1, 3, 3, 1], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    let out = pool(B::AVERAGE_POOL_2D, Padding::VALID, 2, 1, x(), &[1, 2, 2, 1]);
    close(&out, &[1, 2, 2, 1], &[3.0, 4.0, 6.0, 7.0]);
    // SAME, stride 2: windows {1,2,4,5}, {3,6}, {7,8}, {9}; padding is not counted.
    let out = pool(B::AVERAGE_POOL_2D, Padding::SAME, 2, 2, x(), &[1, 2, 2, 1]);
    close(&out, &[1, 2, 2, 1], &[3.0, 4.5, 7.5, 9.0]);
}

#[test]
fn max_pool_2d_same_ignores_padding() {
    let x = x4([1, 3, 3, 1], &[-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -9.0]);
    let out = pool(B::MAX_POOL_2D, Padding::SAME, 2, 2, x, &[1, 2, 2, 1]);
    close(&out, &[1, 2, 2, 1], &[-1.0, -3.0, -7.0, -9.0]);
}

// Transposed convolution of x = [[1,2],[3,4]] by w = [[1,2,3],[4,5,6],[7,8,9]], stride 2:
// the full 5x5 result (each input pixel scatters x * w at (2iy, 2ix)).
#[rustfmt::skip]
const DECONV_FULL: [f32; 25] = [
    1.0, 2.0, 5.0, 4.0, 6.0,
    4.0, 5.0, 14.0, 10.0, 12.0,
    10.0, 14.0, 36.0, 24.0, 30.0,
    12.0, 15.0, 34.0, 20.0, 24.0,
    21.0, 24.0, 55.0, 32.0, 36.0,
];

/// Top-left `n`x`n` corner of [`DECONV_FULL`], plus `bias`.
fn deconv_expected(n: usize, bias: f32) -> Vec<f32> {
    (0..n).flat_map(|y| (0..n).map(move |x| DECONV_FULL[y * 5 + x] + bias)).collect()
}

fn deconv_inputs() -> (T, T, Tensor) {
    let w = c(TT::FLOAT32, &[1, 3, 3, 1], f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]));
    (t(TT::FLOAT32, &[1, 2, 2, 1]), w, x4([1, 2, 2, 1], &[1.0, 2.0, 3.0, 4.0]))
}

#[test]
fn transpose_conv_same_and_valid() {
    for (padding, n) in [(Padding::SAME, 4), (Padding::VALID, 5)] {
        let (xt, w, x) = deconv_inputs();
        let bytes = one(
            B::TRANSPOSE_CONV,
            opts!(
                TransposeConvOptions,
                tfl::TransposeConvOptionsArgs { padding, stride_w: 2, stride_h: 2, ..Default::default() }
            ),
            vec![
                c(TT::INT32, &[4], i32s(&[1, n, n, 1])),
                w,
                xt,
                c(TT::FLOAT32, &[1], f32s(&[0.5])),
                t(TT::FLOAT32, &[1, n, n, 1]),
            ],
            &[0, 1, 2, 3],
            &[4],
            (&[2], &[4]),
        );
        // SAME: TFLite pads as a forward conv from 4 to 2 would: total 1, none before, so
        // the output is the top-left 4x4 of the full result.
        let n = n as usize;
        close(&run(&bytes, vec![x])[0], &[1, n, n, 1], &deconv_expected(n, 0.5));
    }
}

#[test]
fn transpose_conv_without_bias() {
    let (xt, w, x) = deconv_inputs();
    let bytes = one(
        B::TRANSPOSE_CONV,
        opts!(
            TransposeConvOptions,
            tfl::TransposeConvOptionsArgs { padding: Padding::SAME, stride_w: 2, stride_h: 2, ..Default::default() }
        ),
        vec![c(TT::INT32, &[4], i32s(&[1, 4, 4, 1])), w, xt, t(TT::FLOAT32, &[1, 4, 4, 1])],
        &[0, 1, 2],
        &[3],
        (&[2], &[3]),
    );
    close(&run(&bytes, vec![x])[0], &[1, 4, 4, 1], &deconv_expected(4, 0.0));
}

#[test]
fn convolution_2d_transpose_bias_custom_op() {
    for (pad, n) in [(1i32, 4i32), (2, 5)] {
        let (xt, w, x) = deconv_inputs();
        let options = i32s(&[pad, 2, 2]);
        let tensors = vec![xt, w, c(TT::FLOAT32, &[1], f32s(&[0.5])), t(TT::FLOAT32, &[1, n, n, 1])];
        let ops = vec![op(Code::Custom("Convolution2DTransposeBias"), Opts::Custom(options), &[0, 1, 2], &[3])];
        let bytes = build(vec![sg(tensors, ops, &[0], &[3])]);
        let n = n as usize;
        close(&run(&bytes, vec![x])[0], &[1, n, n, 1], &deconv_expected(n, 0.5));
    }
}

#[test]
fn fully_connected_rank_3_input_with_and_without_keep_num_dims() {
    for (keep_num_dims, out) in [(true, vec![1, 2, 2]), (false, vec![2, 2])] {
        let bytes = one(
            B::FULLY_CONNECTED,
            opts!(FullyConnectedOptions, tfl::FullyConnectedOptionsArgs { keep_num_dims, ..Default::default() }),
            vec![
                t(TT::FLOAT32, &[1, 2, 3]),
                c(TT::FLOAT32, &[2, 3], f32s(&[1.0, 0.0, -1.0, 0.5, 0.5, 0.5])),
                t(TT::FLOAT32, &out),
            ],
            &[0, 1, -1],
            &[2],
            (&[0], &[2]),
        );
        let x = tensor1(&[1f32, 2.0, 3.0, 4.0, 5.0, 6.0]).into_shape(&[1, 2, 3]).unwrap();
        let shape: Vec<usize> = out.iter().map(|d| *d as usize).collect();
        close(&run(&bytes, vec![x])[0], &shape, &[-2.0, 3.0, -2.0, 7.5]);
    }
}
