//! Global average pooling with an f64 accumulator.
//!
//! A running f32 sum over thousands of values drifts by a few ULPs per add; in models that
//! amplify their squeeze-and-excitation scales (MediaPipe's selfie segmentation sums 64x64
//! values in its first block), that drift reaches the output at the 1e-3 level. Summing in
//! f64 makes the mean exact to f32 precision, at the cost of one pass over the input.

use tract_core::internal::*;

/// Mean over the H and W axes of an NHWC f32 tensor; output `[N,1,1,C]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GlobalAveragePool;

impl Op for GlobalAveragePool {
    fn name(&self) -> StaticName {
        "GlobalAveragePoolF64".into()
    }
    op_as_typed_op!();
}

impl EvalOp for GlobalAveragePool {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = input.shape();
        ensure!(shape.len() == 4, "global average pool expects NHWC");
        let (n, hw, c) = (shape[0], shape[1] * shape[2], shape[3]);
        let view = input.try_as_plain_ram()?;
        let data = view.as_slice::<f32>()?;
        let mut out = Tensor::zero::<f32>(&[n, 1, 1, c])?;
        {
            let mut out_view = out.try_as_plain_ram_mut()?;
            let out_data = out_view.as_slice_mut::<f32>()?;
            let mut acc = vec![0f64; c];
            for b in 0..n {
                acc.iter_mut().for_each(|a| *a = 0.0);
                for pixel in data[b * hw * c..(b + 1) * hw * c].chunks_exact(c) {
                    for (a, x) in acc.iter_mut().zip(pixel) {
                        *a += *x as f64;
                    }
                }
                for (o, a) in out_data[b * c..(b + 1) * c].iter_mut().zip(&acc) {
                    *o = (*a / hw.max(1) as f64) as f32;
                }
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for GlobalAveragePool {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].rank() == 4 && inputs[0].datum_type == f32::datum_type());
        let s = &inputs[0].shape;
        Ok(tvec!(f32::fact([s[0].clone(), 1.to_dim(), 1.to_dim(), s[3].clone()])))
    }
    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_each_channel_over_the_plane() {
        let x = tensor4(&[[[[1.0f32, 10.0], [3.0, 30.0]], [[5.0, 50.0], [7.0, 70.0]]]]);
        let y = GlobalAveragePool.eval_out_of_plan(tvec!(x.into_tvalue())).unwrap().unwrap();
        assert_eq!(*y[0], tensor4(&[[[[4.0f32, 40.0]]]]));
    }

    #[test]
    fn a_large_plane_keeps_full_precision() {
        // 0.1 is not representable; an f32 running sum over 2^16 copies drifts visibly.
        let x = Tensor::from_shape(&[1, 256, 256, 1], &vec![0.1f32; 65536]).unwrap();
        let y = GlobalAveragePool.eval_out_of_plan(tvec!(x.into_tvalue())).unwrap().unwrap();
        let v = y[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap()[0];
        assert_eq!(v, 0.1f32);
    }
}
