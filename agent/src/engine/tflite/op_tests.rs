//! Per-operator tests of the TFLite importer: each test builds a tiny flatbuffer around one
//! operator (or a few), loads it through [`Model::load_bytes`] and checks hand-computed
//! numbers.
//!
//! This file holds the flatbuffer builder and the run-and-compare helpers; the tests live by
//! operator family, as the translators do in `ops/`: [`elementwise`] (with quantisation and
//! constants), [`shape`], [`reduce`], [`conv`] (with pooling and dense layers) and
//! [`control`] (resource variables and IF).

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

// After the macro: the tests use it.
mod control;
mod conv;
mod elementwise;
mod reduce;
mod shape;

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
