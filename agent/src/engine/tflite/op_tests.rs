//! Per-operator tests of the TFLite importer: each test builds a tiny flatbuffer around one
//! operator (or a few), loads it through [`Model::load_bytes`] and checks hand-computed
//! numbers.

use std::sync::Arc;

use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use tract_core::internal::*;
use tract_tflite::tflite::{self as tfl, BuiltinOperator as B, Padding, TensorType as TT};

use crate::engine::{Format, LoadOptions, Model};

type Fbb = FlatBufferBuilder<'static>;
type OptFn = Box<dyn FnOnce(&mut Fbb) -> WIPOffset<UnionWIPOffset>>;

/// An operator code: builtin or custom.
enum Code {
    Builtin(B),
    Custom(&'static str),
}

/// Operator options: none, a builtin options table, or raw custom bytes.
enum Opts {
    None,
    Builtin(tfl::BuiltinOptions, OptFn),
    Custom(Vec<u8>),
}

/// `opts!(Conv2DOptions, tfl::Conv2DOptionsArgs { .. })`
macro_rules! opts {
    ($kind: ident, $args: expr) => {
        Opts::Builtin(
            tfl::BuiltinOptions::$kind,
            Box::new(move |fbb: &mut Fbb| {
                let args = $args;
                tfl::$kind::create(fbb, &args).as_union_value()
            }),
        )
    };
}

/// A CSR sparse 2-D constant: first dimension dense, second compressed.
struct Csr {
    dense: i32,
    segments: Vec<i32>,
    indices: Vec<i32>,
}

/// A tensor of a subgraph: type, shape, optional constant bytes, quantisation, sparsity.
struct T {
    dt: TT,
    shape: Vec<i32>,
    data: Option<Vec<u8>>,
    q: Option<(f32, i64)>,
    sparse: Option<Csr>,
}

/// A computed tensor (or graph input).
fn t(dt: TT, shape: &[i32]) -> T {
    T { dt, shape: shape.to_vec(), data: None, q: None, sparse: None }
}

/// A constant tensor.
fn c(dt: TT, shape: &[i32], data: Vec<u8>) -> T {
    T { data: Some(data), ..t(dt, shape) }
}

impl T {
    fn q(mut self, scale: f32, zero_point: i64) -> T {
        self.q = Some((scale, zero_point));
        self
    }
}

struct Op {
    code: Code,
    opts: Opts,
    ins: Vec<i32>,
    outs: Vec<i32>,
}

fn op(code: Code, opts: Opts, ins: &[i32], outs: &[i32]) -> Op {
    Op { code, opts, ins: ins.to_vec(), outs: outs.to_vec() }
}

struct Sg {
    tensors: Vec<T>,
    ops: Vec<Op>,
    ins: Vec<i32>,
    outs: Vec<i32>,
}

fn sg(tensors: Vec<T>, ops: Vec<Op>, ins: &[i32], outs: &[i32]) -> Sg {
    Sg { tensors, ops, ins: ins.to_vec(), outs: outs.to_vec() }
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn i32s(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Serialises subgraphs (the first is the main one) into a TFLite flatbuffer.
fn build(sgs: Vec<Sg>) -> Vec<u8> {
    let mut fbb = Fbb::new();
    let empty = tfl::Buffer::create(&mut fbb, &tfl::BufferArgs { data: None });
    let mut buffers = vec![empty];
    let mut codes: Vec<(B, Option<&str>)> = vec![];
    let mut subgraphs = vec![];
    for g in sgs {
        let mut tensors = vec![];
        for (i, tt) in g.tensors.iter().enumerate() {
            let buffer = match &tt.data {
                Some(d) => {
                    let data = fbb.create_vector(d);
                    buffers.push(tfl::Buffer::create(&mut fbb, &tfl::BufferArgs { data: Some(data) }));
                    buffers.len() as u32 - 1
                }
                None => 0,
            };
            let quantization = tt.q.map(|(s, z)| {
                let scale = fbb.create_vector(&[s]);
                let zero_point = fbb.create_vector(&[z]);
                let args = tfl::QuantizationParametersArgs {
                    scale: Some(scale),
                    zero_point: Some(zero_point),
                    ..Default::default()
                };
                tfl::QuantizationParameters::create(&mut fbb, &args)
            });
            let sparsity = tt.sparse.as_ref().map(|csr| {
                let dense = tfl::DimensionMetadata::create(
                    &mut fbb,
                    &tfl::DimensionMetadataArgs {
                        format: tfl::DimensionType::DENSE,
                        dense_size: csr.dense,
                        ..Default::default()
                    },
                );
                let seg = fbb.create_vector(&csr.segments);
                let seg = tfl::Int32Vector::create(&mut fbb, &tfl::Int32VectorArgs { values: Some(seg) });
                let ind = fbb.create_vector(&csr.indices);
                let ind = tfl::Int32Vector::create(&mut fbb, &tfl::Int32VectorArgs { values: Some(ind) });
                let sparse = tfl::DimensionMetadata::create(
                    &mut fbb,
                    &tfl::DimensionMetadataArgs {
                        format: tfl::DimensionType::SPARSE_CSR,
                        array_segments_type: tfl::SparseIndexVector::Int32Vector,
                        array_segments: Some(seg.as_union_value()),
                        array_indices_type: tfl::SparseIndexVector::Int32Vector,
                        array_indices: Some(ind.as_union_value()),
                        ..Default::default()
                    },
                );
                let order = fbb.create_vector(&[0, 1]);
                let metas = fbb.create_vector(&[dense, sparse]);
                tfl::SparsityParameters::create(
                    &mut fbb,
                    &tfl::SparsityParametersArgs {
                        traversal_order: Some(order),
                        dim_metadata: Some(metas),
                        ..Default::default()
                    },
                )
            });
            let shape = fbb.create_vector(&tt.shape);
            let name = fbb.create_string(&format!("t{i}"));
            let args = tfl::TensorArgs {
                shape: Some(shape),
                type_: tt.dt,
                buffer,
                name: Some(name),
                quantization,
                sparsity,
                ..Default::default()
            };
            tensors.push(tfl::Tensor::create(&mut fbb, &args));
        }
        let mut operators = vec![];
        for o in g.ops {
            let key = match o.code {
                Code::Builtin(b) => (b, None),
                Code::Custom(name) => (B::CUSTOM, Some(name)),
            };
            let opcode_index = match codes.iter().position(|k| *k == key) {
                Some(i) => i,
                None => {
                    codes.push(key);
                    codes.len() - 1
                }
            } as u32;
            let (builtin_options_type, builtin_options, custom_options) = match o.opts {
                Opts::None => (tfl::BuiltinOptions::NONE, None, None),
                Opts::Builtin(kind, f) => (kind, Some(f(&mut fbb)), None),
                Opts::Custom(bytes) => (tfl::BuiltinOptions::NONE, None, Some(fbb.create_vector(&bytes))),
            };
            let inputs = fbb.create_vector(&o.ins);
            let outputs = fbb.create_vector(&o.outs);
            let args = tfl::OperatorArgs {
                opcode_index,
                inputs: Some(inputs),
                outputs: Some(outputs),
                builtin_options_type,
                builtin_options,
                custom_options,
                ..Default::default()
            };
            operators.push(tfl::Operator::create(&mut fbb, &args));
        }
        let tensors = fbb.create_vector(&tensors);
        let operators = fbb.create_vector(&operators);
        let inputs = fbb.create_vector(&g.ins);
        let outputs = fbb.create_vector(&g.outs);
        let args = tfl::SubGraphArgs {
            tensors: Some(tensors),
            inputs: Some(inputs),
            outputs: Some(outputs),
            operators: Some(operators),
            ..Default::default()
        };
        subgraphs.push(tfl::SubGraph::create(&mut fbb, &args));
    }
    let codes: Vec<_> = codes
        .iter()
        .map(|(b, custom)| {
            let custom_code = custom.map(|c| fbb.create_string(c));
            let args = tfl::OperatorCodeArgs {
                deprecated_builtin_code: b.0.min(127) as i8,
                builtin_code: *b,
                custom_code,
                version: 1,
            };
            tfl::OperatorCode::create(&mut fbb, &args)
        })
        .collect();
    let codes = fbb.create_vector(&codes);
    let subgraphs = fbb.create_vector(&subgraphs);
    let buffers = fbb.create_vector(&buffers);
    let model = tfl::Model::create(
        &mut fbb,
        &tfl::ModelArgs {
            version: 3,
            operator_codes: Some(codes),
            subgraphs: Some(subgraphs),
            buffers: Some(buffers),
            ..Default::default()
        },
    );
    tfl::finish_model_buffer(&mut fbb, model);
    fbb.finished_data().to_vec()
}

/// A model of one subgraph holding one operator.
fn one(code: B, opts: Opts, tensors: Vec<T>, ins: &[i32], outs: &[i32], graph: (&[i32], &[i32])) -> Vec<u8> {
    build(vec![sg(tensors, vec![op(Code::Builtin(code), opts, ins, outs)], graph.0, graph.1)])
}

fn load(bytes: &[u8]) -> Arc<Model> {
    Arc::new(Model::load_bytes(Format::Tflite, bytes, &LoadOptions::default()).expect("model loads"))
}

fn run(bytes: &[u8], inputs: Vec<Tensor>) -> Vec<Tensor> {
    load(bytes).session().unwrap().run(inputs).expect("model runs")
}

/// Asserts an f32 tensor's shape and values, within 1e-4.
#[track_caller]
fn close(got: &Tensor, shape: &[usize], want: &[f32]) {
    assert_eq!(got.shape(), shape, "shape of {got:?}");
    let got = got.cast_to::<f32>().unwrap();
    let got = got.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-4, "element {i}: got {g}, want {w}\n got {got:?}\nwant {want:?}");
    }
}

fn x4(shape: [usize; 4], v: &[f32]) -> Tensor {
    tensor1(v).into_shape(&shape).unwrap()
}

fn range(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32).collect()
}

// ---------------------------------------------------------------------------------------
// Element-wise

#[test]
fn prelu_per_channel_alpha() {
    let bytes = one(
        B::PRELU,
        Opts::None,
        vec![t(TT::FLOAT32, &[1, 2, 2]), c(TT::FLOAT32, &[1, 1, 2], f32s(&[0.25, 0.5])), t(TT::FLOAT32, &[1, 2, 2])],
        &[0, 1],
        &[2],
        (&[0], &[2]),
    );
    let out = run(&bytes, vec![tensor1(&[-1f32, 2.0, 3.0, -4.0]).into_shape(&[1, 2, 2]).unwrap()]);
    close(&out[0], &[1, 2, 2], &[-0.25, 2.0, 3.0, -2.0]);
}

#[test]
fn hard_swish() {
    let bytes =
        one(B::HARD_SWISH, Opts::None, vec![t(TT::FLOAT32, &[7]), t(TT::FLOAT32, &[7])], &[0], &[1], (&[0], &[1]));
    let out = run(&bytes, vec![tensor1(&[-4f32, -3.0, -1.0, 0.0, 1.0, 3.0, 4.0])]);
    // x * relu6(x + 3) / 6
    close(&out[0], &[7], &[0.0, 0.0, -1.0 / 3.0, 0.0, 2.0 / 3.0, 3.0, 4.0]);
}

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

fn arg(code: B, axis: i32, out_shape: &[i32]) -> Tensor {
    let o = if code == B::ARG_MAX {
        opts!(ArgMaxOptions, tfl::ArgMaxOptionsArgs { output_type: TT::INT32 })
    } else {
        opts!(ArgMinOptions, tfl::ArgMinOptionsArgs { output_type: TT::INT32 })
    };
    let bytes = one(
        code,
        o,
        vec![t(TT::FLOAT32, &[2, 3]), c(TT::INT32, &[1], i32s(&[axis])), t(TT::INT32, out_shape)],
        &[0, 1],
        &[2],
        (&[0], &[2]),
    );
    run(&bytes, vec![tensor2(&[[1f32, 5.0, 3.0], [7.0, 2.0, 9.0]])]).remove(0)
}

#[test]
fn arg_max_and_arg_min() {
    assert_eq!(arg(B::ARG_MAX, 1, &[2]), tensor1(&[1i32, 2]));
    assert_eq!(arg(B::ARG_MIN, 1, &[2]), tensor1(&[0i32, 1]));
    assert_eq!(arg(B::ARG_MAX, 0, &[3]), tensor1(&[1i32, 0, 1]));
    assert_eq!(arg(B::ARG_MIN, -2, &[3]), tensor1(&[0i32, 1, 0]));
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

#[test]
fn mean_with_and_without_keep_dims() {
    let m = |axis: i32, keep_dims: bool, out: &[i32]| {
        one(
            B::MEAN,
            opts!(ReducerOptions, tfl::ReducerOptionsArgs { keep_dims }),
            vec![t(TT::FLOAT32, &[2, 3]), c(TT::INT32, &[1], i32s(&[axis])), t(TT::FLOAT32, out)],
            &[0, 1],
            &[2],
            (&[0], &[2]),
        )
    };
    let x = || tensor1(&range(6)).into_shape(&[2, 3]).unwrap();
    close(&run(&m(1, false, &[2]), vec![x()])[0], &[2], &[1.0, 4.0]);
    close(&run(&m(0, true, &[1, 3]), vec![x()])[0], &[1, 3], &[1.5, 2.5, 3.5]);
    close(&run(&m(-1, true, &[2, 1]), vec![x()])[0], &[2, 1], &[1.0, 4.0]);
}

// ---------------------------------------------------------------------------------------
// Quantisation and constants

/// `w` (a constant, index 1) goes through `code`, then is added to the graph input `x`.
fn const_then_add(code: B, w: T, n: i32) -> Vec<u8> {
    let tensors = vec![t(TT::FLOAT32, &[n]), w, t(TT::FLOAT32, &[n]), t(TT::FLOAT32, &[n])];
    let ops = vec![
        op(Code::Builtin(code), Opts::None, &[1], &[2]),
        op(Code::Builtin(B::ADD), opts!(AddOptions, tfl::AddOptionsArgs::default()), &[0, 2], &[3]),
    ];
    build(vec![sg(tensors, ops, &[0], &[3])])
}

#[test]
fn dequantize_fp16_constant() {
    let vals = [1.5f32, -2.0, 0.25];
    let bytes: Vec<u8> = vals.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect();
    let model = const_then_add(B::DEQUANTIZE, c(TT::FLOAT16, &[3], bytes), 3);
    close(&run(&model, vec![tensor1(&[10f32, 20.0, 30.0])])[0], &[3], &[11.5, 18.0, 30.25]);
}

#[test]
fn dequantize_int8_constant_with_scale_and_zero_point() {
    let w = c(TT::INT8, &[3], [-2i8, 0, 5].iter().map(|v| *v as u8).collect()).q(0.5, -2);
    let model = const_then_add(B::DEQUANTIZE, w, 3);
    // 0.5 * (q + 2)
    close(&run(&model, vec![tensor1(&[0f32, 0.0, 0.0])])[0], &[3], &[0.0, 1.0, 3.5]);
}

#[test]
fn quantize_float_to_int8_output() {
    let bytes =
        one(B::QUANTIZE, Opts::None, vec![t(TT::FLOAT32, &[4]), t(TT::INT8, &[4]).q(0.5, 1)], &[0], &[1], (&[0], &[1]));
    let out = run(&bytes, vec![tensor1(&[0f32, 1.0, -1.26, 100.0])]);
    // round(x / 0.5) + 1, saturated.
    assert_eq!(out[0], tensor1(&[1i8, 3, -2, 127]));
}

#[test]
fn densify_csr_constant_feeding_add() {
    // Dense [[0, 1.5, 0], [2, 0, 3]]: row 0 holds column 1, row 1 columns 0 and 2.
    let mut w = c(TT::FLOAT32, &[2, 3], f32s(&[1.5, 2.0, 3.0]));
    w.sparse = Some(Csr { dense: 2, segments: vec![0, 1, 3], indices: vec![1, 0, 2] });
    let tensors = vec![t(TT::FLOAT32, &[2, 3]), w, t(TT::FLOAT32, &[2, 3]), t(TT::FLOAT32, &[2, 3])];
    let ops = vec![
        op(Code::Builtin(B::DENSIFY), Opts::None, &[1], &[2]),
        op(Code::Builtin(B::ADD), opts!(AddOptions, tfl::AddOptionsArgs::default()), &[0, 2], &[3]),
    ];
    let bytes = build(vec![sg(tensors, ops, &[0], &[3])]);
    let x = tensor1(&[10f32, 20.0, 30.0, 40.0, 50.0, 60.0]).into_shape(&[2, 3]).unwrap();
    close(&run(&bytes, vec![x])[0], &[2, 3], &[10.0, 21.5, 30.0, 42.0, 50.0, 63.0]);
}

// ---------------------------------------------------------------------------------------
// Convolutions, pooling, dense

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

// ---------------------------------------------------------------------------------------
// Resource variables and control flow

#[test]
fn resource_variable_accumulates_from_call_once_initial_value() {
    let handle = || {
        Opts::Builtin(
            tfl::BuiltinOptions::VarHandleOptions,
            Box::new(|fbb: &mut Fbb| {
                let shared_name = Some(fbb.create_string("acc"));
                let args = tfl::VarHandleOptionsArgs { container: None, shared_name };
                tfl::VarHandleOptions::create(fbb, &args).as_union_value()
            }),
        )
    };
    let b = Code::Builtin;
    // Main: x(0), handle(1), read(2), sum(3).
    let main = sg(
        vec![t(TT::FLOAT32, &[2]), t(TT::RESOURCE, &[]), t(TT::FLOAT32, &[2]), t(TT::FLOAT32, &[2])],
        vec![
            op(b(B::CALL_ONCE), opts!(CallOnceOptions, tfl::CallOnceOptionsArgs { init_subgraph_index: 1 }), &[], &[]),
            op(b(B::VAR_HANDLE), handle(), &[], &[1]),
            op(b(B::READ_VARIABLE), Opts::None, &[1], &[2]),
            op(b(B::ADD), opts!(AddOptions, tfl::AddOptionsArgs::default()), &[2, 0], &[3]),
            op(b(B::ASSIGN_VARIABLE), Opts::None, &[1, 3], &[]),
        ],
        &[0],
        &[3],
    );
    // Init: handle(0), initial value (1).
    let init = sg(
        vec![t(TT::RESOURCE, &[]), c(TT::FLOAT32, &[2], f32s(&[10.0, 20.0]))],
        vec![op(b(B::VAR_HANDLE), handle(), &[], &[0]), op(b(B::ASSIGN_VARIABLE), Opts::None, &[0, 1], &[])],
        &[],
        &[],
    );
    let model = load(&build(vec![main, init]));
    assert!(model.is_stateful());
    let x = || tensor1(&[1f32, 2.0]);
    let mut s = model.session().unwrap();
    close(&s.run(vec![x()]).unwrap()[0], &[2], &[11.0, 22.0]);
    close(&s.run(vec![x()]).unwrap()[0], &[2], &[12.0, 24.0]);
    close(&s.run(vec![x()]).unwrap()[0], &[2], &[13.0, 26.0]);
    let mut fresh = model.session().unwrap();
    close(&fresh.run(vec![x()]).unwrap()[0], &[2], &[11.0, 22.0]);
    s.reset();
    close(&s.run(vec![x()]).unwrap()[0], &[2], &[11.0, 22.0]);
}

/// Branch subgraphs: then = x + 1, else = x * 2 (x of shape [2]).
fn if_branches() -> Vec<Sg> {
    let branch = |code: B, opts: Opts, k: f32| {
        sg(
            vec![t(TT::FLOAT32, &[2]), c(TT::FLOAT32, &[1], f32s(&[k])), t(TT::FLOAT32, &[2])],
            vec![op(Code::Builtin(code), opts, &[0, 1], &[2])],
            &[0],
            &[2],
        )
    };
    vec![
        branch(B::ADD, opts!(AddOptions, tfl::AddOptionsArgs::default()), 1.0),
        branch(B::MUL, opts!(MulOptions, tfl::MulOptionsArgs::default()), 2.0),
    ]
}

fn if_opts() -> Opts {
    opts!(IfOptions, tfl::IfOptionsArgs { then_subgraph_index: 1, else_subgraph_index: 2 })
}

#[test]
fn if_with_constant_condition_takes_the_right_branch() {
    for (cond, want) in [(true, [4.0, 6.0]), (false, [6.0, 10.0])] {
        let main = sg(
            vec![t(TT::FLOAT32, &[2]), c(TT::BOOL, &[], vec![cond as u8]), t(TT::FLOAT32, &[2])],
            vec![op(Code::Builtin(B::IF), if_opts(), &[1, 0], &[2])],
            &[0],
            &[2],
        );
        let mut sgs = vec![main];
        sgs.extend(if_branches());
        close(&run(&build(sgs), vec![tensor1(&[3f32, 5.0])])[0], &[2], &want);
    }
}

#[test]
fn if_with_runtime_condition_takes_the_right_branch() {
    let main = sg(
        vec![t(TT::BOOL, &[]), t(TT::FLOAT32, &[2]), t(TT::FLOAT32, &[2])],
        vec![op(Code::Builtin(B::IF), if_opts(), &[0, 1], &[2])],
        &[0, 1],
        &[2],
    );
    let mut sgs = vec![main];
    sgs.extend(if_branches());
    let model = load(&build(sgs));
    let mut s = model.session().unwrap();
    close(&s.run(vec![tensor0(true), tensor1(&[3f32, 5.0])]).unwrap()[0], &[2], &[4.0, 6.0]);
    close(&s.run(vec![tensor0(false), tensor1(&[3f32, 5.0])]).unwrap()[0], &[2], &[6.0, 10.0]);
}

#[test]
fn arg_max_ties_pick_the_first_index() {
    let bytes = one(
        B::ARG_MAX,
        opts!(ArgMaxOptions, tfl::ArgMaxOptionsArgs { output_type: TT::INT32 }),
        vec![t(TT::FLOAT32, &[1, 3]), c(TT::INT32, &[1], i32s(&[1])), t(TT::INT32, &[1])],
        &[0, 1],
        &[2],
        (&[0], &[2]),
    );
    assert_eq!(run(&bytes, vec![tensor2(&[[1f32, 3.0, 3.0]])])[0], tensor1(&[1i32]));
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
