//! One translator per TFLite operator, onto tract-core ops.
//!
//! Values flow as tract outlets. Quantised tensors flow as real f32 (see [`super::qops`]);
//! after each operator whose output is quantised, [`Graph::translate`] snaps the result
//! onto the output's grid, except for pure data movement that keeps the parameters.
//!
//! This file is the dispatcher, `translate_op`, which only routes an operator code to its
//! translator, and the graph helpers every translator uses. The translators live by
//! operator family:
//!
//! - [`elementwise`]: arithmetic, unary math and activations, PRELU, casts and quantisation;
//! - [`conv`]: convolutions, transposed convolutions, pooling, dense layers and matmuls;
//! - [`shape`]: reshapes, transposes, slices, concatenation, padding, gather, splits,
//!   depth/space rearrangements, resizing;
//! - [`reduce`]: reductions, arg max/min, softmax;
//! - [`control`]: resource variables and IF.

use tract_core::internal::*;
use tract_core::ops::change_axes::wire_with_rank_broadcast;
use tract_core::ops::math;
use tract_core::ops::nn;
use tract_tflite::tflite::{self as tfl, ActivationFunctionType, BuiltinOperator as B};

use super::qops::FakeQuant;
use super::{Graph, OpCode};
use elementwise::Arith;

/// An operator being translated.
pub(crate) struct Node<'o> {
    pub code: OpCode,
    pub flat: tfl::Operator<'o>,
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
    pub label: String,
}

macro_rules! options {
    ($node: expr, $accessor: ident) => {
        $node
            .flat
            .$accessor()
            .with_context(|| format!("missing or mistyped options ({:?})", $node.flat.builtin_options_type()))?
    };
}

// After the macro: the translators use it.
mod control;
mod conv;
mod elementwise;
mod reduce;
mod shape;

fn normalize_axis(axis: i64, rank: usize) -> TractResult<usize> {
    let r = rank as i64;
    ensure!(axis >= -r && axis < r, "axis {axis} out of range for rank {rank}");
    Ok(if axis < 0 { (axis + r) as usize } else { axis as usize })
}

fn ints(t: &Tensor) -> TractResult<Vec<i64>> {
    Ok(t.cast_to::<i64>()?.try_as_plain_ram()?.as_slice::<i64>()?.to_vec())
}

/// Operators that only move data: with the same quantisation on both sides they need no
/// requantisation.
fn moves_data_only(code: &OpCode) -> bool {
    matches!(
        code,
        OpCode::Builtin(
            B::RESHAPE
                | B::SQUEEZE
                | B::EXPAND_DIMS
                | B::TRANSPOSE
                | B::STRIDED_SLICE
                | B::SLICE
                | B::SPLIT
                | B::SPLIT_V
                | B::CONCATENATION
                | B::GATHER
                | B::DEPTH_TO_SPACE
                | B::SPACE_TO_DEPTH
                | B::PAD
                | B::PADV2
                | B::MAX_POOL_2D
        )
    )
}

impl Graph<'_, '_> {
    fn input(&mut self, n: &Node, k: usize) -> TractResult<OutletId> {
        match n.inputs.get(k) {
            Some(ix) if *ix >= 0 => self.value(*ix),
            _ => bail!("input {k} is missing"),
        }
    }

    fn opt_input(&mut self, n: &Node, k: usize) -> TractResult<Option<OutletId>> {
        match n.inputs.get(k) {
            Some(ix) if *ix >= 0 => Ok(Some(self.value(*ix)?)),
            _ => Ok(None),
        }
    }

    fn input_shape(&mut self, n: &Node, k: usize, what: &str) -> TractResult<Vec<usize>> {
        let o = self.input(n, k)?;
        Ok(self.fact(o)?.shape.as_concrete().context(what.to_string())?.to_vec())
    }

    fn fact(&self, o: OutletId) -> TractResult<TypedFact> {
        Ok(self.target.outlet_fact(o)?.clone())
    }

    fn input_konst(&mut self, n: &Node, k: usize, what: &str) -> TractResult<Arc<Tensor>> {
        let ix = *n.inputs.get(k).filter(|ix| **ix >= 0).with_context(|| format!("{what} is missing"))?;
        self.konst(ix, what)
    }

    fn scalar(&mut self, base: &str, v: f32) -> TractResult<OutletId> {
        let name = self.name(base);
        self.target.add_const(name, tensor0(v))
    }

    fn binary(
        &mut self,
        base: &str,
        op: tract_core::ops::binary::TypedBinOp,
        a: OutletId,
        b: OutletId,
    ) -> TractResult<OutletId> {
        let name = self.name(base);
        Ok(wire_with_rank_broadcast(name, self.target, op, &[a, b])?[0])
    }

    fn reshape(&mut self, base: &str, x: OutletId, to: &[TDim]) -> TractResult<OutletId> {
        let from = self.fact(x)?.shape.to_tvec();
        if from.as_slice() == to {
            return Ok(x);
        }
        Ok(self.wire(base, AxisOp::Reshape(0, from, to.into()), &[x])?[0])
    }

    /// Translates one operator and records its outputs.
    pub(crate) fn translate(&mut self, n: &Node) -> TractResult<()> {
        let outs = self.translate_op(n)?;
        // Resource handles are tracked by the importer, not carried as graph values.
        let mut valued = vec![];
        for t in n.outputs.iter().filter(|t| **t >= 0) {
            let info = self.info(*t)?;
            if info.dt != DatumType::Blob {
                valued.push((*t, info));
            }
        }
        ensure!(outs.len() >= valued.len(), "translator produced {} outputs for {}", outs.len(), valued.len());
        for (k, ((t, info), o)) in valued.into_iter().zip(outs).enumerate() {
            let t = &t;
            let mut o = o;
            if let Some(q) = info.qparams() {
                // A variable holds values already on its grid (assigned from quantised
                // tensors, or initialised from integers), so reading it needs no snapping.
                let keeps = n.code == OpCode::Builtin(B::READ_VARIABLE)
                    || moves_data_only(&n.code)
                        && n.inputs
                            .first()
                            .filter(|i| **i >= 0)
                            .map(|i| self.info(*i).ok().and_then(|i| i.qparams()) == Some(q))
                            .unwrap_or(false);
                if !keeps {
                    o = self.wire(&format!("{}.requant{k}", n.label), FakeQuant(q), &[o])?[0];
                }
            }
            self.values.insert(*t, o);
        }
        Ok(())
    }

    fn translate_op(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let code = match &n.code {
            OpCode::Builtin(b) => *b,
            OpCode::Custom(c) if c == "Convolution2DTransposeBias" => return self.conv_transpose_bias(n),
            OpCode::Custom(c) => bail!("unsupported custom operator {c}"),
        };
        use ActivationFunctionType as Act;
        match code {
            B::ADD => {
                self.arith_op(n, Arith::Add, options!(n, builtin_options_as_add_options).fused_activation_function())
            }
            B::SUB => {
                self.arith_op(n, Arith::Sub, options!(n, builtin_options_as_sub_options).fused_activation_function())
            }
            B::MUL => {
                self.arith_op(n, Arith::Mul, options!(n, builtin_options_as_mul_options).fused_activation_function())
            }
            B::DIV => {
                self.arith_op(n, Arith::Div, options!(n, builtin_options_as_div_options).fused_activation_function())
            }
            B::MAXIMUM => self.arith_op(n, Arith::Max, Act::NONE),
            B::MINIMUM => self.arith_op(n, Arith::Min, Act::NONE),
            B::POW => self.arith_op(n, Arith::Pow, Act::NONE),
            B::SQUARED_DIFFERENCE => self.squared_difference(n),
            B::ABS => self.unary(n, Box::new(math::abs())),
            B::CEIL => self.unary(n, Box::new(math::ceil())),
            B::COS => self.unary(n, Box::new(math::cos())),
            B::EXP => self.unary(n, Box::new(math::exp())),
            B::FLOOR => self.unary(n, Box::new(math::floor())),
            B::LOG => self.unary(n, Box::new(math::ln())),
            B::NEG => self.unary(n, Box::new(math::neg())),
            B::RSQRT => self.unary(n, Box::new(math::rsqrt())),
            B::SIN => self.unary(n, Box::new(math::sin())),
            B::SQRT => self.unary(n, Box::new(math::sqrt())),
            B::SQUARE => self.unary(n, Box::new(math::square())),
            B::TANH => self.unary(n, Box::new(math::tanh())),
            B::LOGISTIC => self.unary(n, Box::new(nn::sigmoid())),
            B::HARD_SWISH => self.unary(n, Box::new(nn::hard_swish())),
            B::LEAKY_RELU => self.leaky_relu(n),
            B::RELU => self.relu(n, Some(0.0), None),
            B::RELU6 => self.relu(n, Some(0.0), Some(6.0)),
            B::RELU_N1_TO_1 => self.relu(n, Some(-1.0), Some(1.0)),
            B::PRELU => self.prelu(n),
            B::CAST => self.cast_op(n),
            B::QUANTIZE | B::DENSIFY => self.already_real(n),
            B::DEQUANTIZE => self.dequantize(n),
            B::CONV_2D => self.conv(n),
            B::DEPTHWISE_CONV_2D => self.depthwise_conv(n),
            B::TRANSPOSE_CONV => self.transpose_conv(n),
            B::MAX_POOL_2D | B::AVERAGE_POOL_2D => self.pool(n, code == B::MAX_POOL_2D),
            B::FULLY_CONNECTED => self.fully_connected(n),
            B::BATCH_MATMUL => self.batch_matmul(n),
            B::RESHAPE => self.reshape_op(n),
            B::SQUEEZE => self.squeeze(n),
            B::EXPAND_DIMS => self.expand_dims(n),
            B::TRANSPOSE => self.transpose(n),
            B::CONCATENATION => self.concatenation(n),
            B::PAD | B::PADV2 | B::MIRROR_PAD => self.pad(n, code),
            B::STRIDED_SLICE => self.strided_slice(n),
            B::SLICE => self.slice(n),
            B::SPLIT => self.split_even(n),
            B::SPLIT_V => self.split_v(n),
            B::GATHER => self.gather(n),
            B::ARG_MAX | B::ARG_MIN => self.arg_reduce(n, code),
            B::MEAN | B::SUM | B::REDUCE_MAX | B::REDUCE_MIN | B::REDUCE_PROD => self.reduce(n, code),
            B::SOFTMAX => self.softmax(n),
            B::RESIZE_BILINEAR => self.resize_bilinear(n),
            B::RESIZE_NEAREST_NEIGHBOR => self.resize_nearest_neighbor(n),
            B::DEPTH_TO_SPACE => self.depth_to_space(n),
            B::SPACE_TO_DEPTH => self.space_to_depth(n),
            B::VAR_HANDLE => self.var_handle(n),
            B::READ_VARIABLE => self.read_variable(n),
            B::ASSIGN_VARIABLE => self.assign_variable(n),
            B::CALL_ONCE => Ok(tvec!()), // run once at load, see `run_init`
            B::IF => self.if_op(n),
            other => bail!("no translator for {other:?}"),
        }
    }
}
