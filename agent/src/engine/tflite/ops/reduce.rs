//! Reductions along axes: MEAN, SUM, REDUCE_MAX/MIN/PROD, ARG_MAX/ARG_MIN, and SOFTMAX
//! over the last axis.

use tract_core::internal::*;
use tract_core::ops::cast::cast;
use tract_core::ops::math;
use tract_core::ops::nn::{self as nn, Reduce, Reducer};
use tract_tflite::tflite::BuiltinOperator as B;

use super::super::Graph;
use super::{ints, normalize_axis, Node};

impl Graph<'_, '_> {
    pub(super) fn reduce(&mut self, n: &Node, code: B) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let x = self.input(n, 0)?;
        let fact = self.fact(x)?;
        let keep = options!(n, builtin_options_as_reducer_options).keep_dims();
        let mut axes: Vec<usize> = ints(&*self.input_konst(n, 1, "axes")?)?
            .iter()
            .map(|a| normalize_axis(*a, fact.rank()))
            .collect::<TractResult<_>>()?;
        axes.sort();
        axes.dedup();
        let reducer = match code {
            B::MEAN | B::SUM => Reducer::Sum,
            B::REDUCE_MAX => Reducer::Max,
            B::REDUCE_MIN => Reducer::Min,
            _ => Reducer::Prod,
        };
        let mut y = self.wire(l, Reduce { axes: axes.iter().copied().collect(), reducer }, &[x])?[0];
        if code == B::MEAN {
            let count: TDim = axes.iter().map(|a| fact.shape[*a].clone()).product();
            let count = count.to_usize().context("MEAN over a dimension unknown at load")?;
            let k = self.scalar(&format!("{l}.inv_count"), 1.0 / count as f32)?;
            y = self.binary(&format!("{l}.mean"), math::mul(), y, k)?;
        }
        if !keep {
            for a in axes.iter().rev() {
                y = self.wire(&format!("{l}.rm{a}"), AxisOp::Rm(*a), &[y])?[0];
            }
        }
        Ok(tvec!(y))
    }

    /// ARG_MAX and ARG_MIN: the index along one axis, which goes away.
    pub(super) fn arg_reduce(&mut self, n: &Node, code: B) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let x = self.input(n, 0)?;
        let rank = self.fact(x)?.rank();
        let axis = normalize_axis(ints(&*self.input_konst(n, 1, "axis")?)?[0], rank)?;
        let reducer = if code == B::ARG_MAX { Reducer::ArgMax(false) } else { Reducer::ArgMin(false) };
        let y = self.wire(l, Reduce { axes: tvec!(axis), reducer }, &[x])?[0];
        let y = self.wire(&format!("{l}.rm"), AxisOp::Rm(axis), &[y])?[0];
        let dt = self.info(n.outputs[0])?.graph_dt();
        self.wire(&format!("{l}.cast"), cast(dt), &[y])
    }

    pub(super) fn softmax(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let beta = options!(n, builtin_options_as_softmax_options).beta();
        let mut x = self.input(n, 0)?;
        if beta != 1.0 {
            let b = self.scalar(&format!("{l}.beta"), beta)?;
            x = self.binary(&format!("{l}.scaled"), math::mul(), x, b)?;
        }
        let rank = self.fact(x)?.rank();
        let op = nn::Softmax { axes: tvec!(rank - 1), quant_output_dt: None, kind: Default::default() };
        self.wire(l, op, &[x])
    }
}
