//! Shape and layout operators: reshapes, transposes, slices, concatenation, padding, gather,
//! splits, depth/space rearrangements and resizing. Most only move data, so a quantised
//! input keeps its grid through them (see `moves_data_only` in [`super`]).

use tract_core::internal::*;
use tract_core::ops::array::{Gather, Pad, PadMode, Slice, StridedSlice, TypedConcat};
use tract_core::ops::cast::cast;
use tract_core::ops::change_axes::perm_to_ops;
use tract_core::ops::nn::{CoordTransformer, Interpolator, Nearest, Resize};
use tract_tflite::tflite::{BuiltinOperator as B, MirrorPadMode};

use super::super::Graph;
use super::{ints, normalize_axis, Node};

impl Graph<'_, '_> {
    /// RESHAPE: the new shape from the second input, else the options, else the output's
    /// declared signature.
    pub(super) fn reshape_op(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let x = self.input(n, 0)?;
        let spec: Vec<i64> = match n.inputs.get(1).filter(|i| **i >= 0) {
            Some(_) => ints(&*self.input_konst(n, 1, "new shape")?)?,
            None => match n.flat.builtin_options_as_reshape_options().and_then(|o| o.new_shape()) {
                Some(s) => s.iter().map(|d| d as i64).collect(),
                None => self.info(n.outputs[0])?.signature.iter().map(|d| d.map(|d| d as i64).unwrap_or(-1)).collect(),
            },
        };
        let dims = self.reshape_dims(x, &spec)?;
        Ok(tvec!(self.reshape(l, x, &dims)?))
    }

    /// Target shape of a reshape, resolving one `-1` against the input volume.
    fn reshape_dims(&self, x: OutletId, spec: &[i64]) -> TractResult<TVec<TDim>> {
        let volume: TDim = self.fact(x)?.shape.iter().product();
        let known: i64 = spec.iter().filter(|d| **d >= 0).product();
        ensure!(spec.iter().filter(|d| **d < 0).count() <= 1, "more than one -1 in shape {spec:?}");
        spec.iter()
            .map(|d| {
                if *d < 0 {
                    ensure!(known > 0, "cannot infer a dimension next to a zero in {spec:?}");
                    Ok(volume.clone() / known as u64)
                } else {
                    Ok(d.to_dim())
                }
            })
            .collect()
    }

    pub(super) fn squeeze(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let x = self.input(n, 0)?;
        let fact = self.fact(x)?;
        let rank = fact.rank();
        let dims: Vec<i64> = n
            .flat
            .builtin_options_as_squeeze_options()
            .and_then(|o| o.squeeze_dims())
            .map(|v| v.iter().map(|d| d as i64).collect())
            .unwrap_or_default();
        let mut axes: Vec<usize> = if dims.is_empty() {
            (0..rank).filter(|a| fact.shape[*a] == 1.to_dim()).collect()
        } else {
            dims.iter().map(|d| normalize_axis(*d, rank)).collect::<TractResult<_>>()?
        };
        axes.sort();
        axes.dedup();
        let mut x = x;
        for a in axes.iter().rev() {
            x = self.wire(&format!("{l}.rm{a}"), AxisOp::Rm(*a), &[x])?[0];
        }
        Ok(tvec!(x))
    }

    pub(super) fn expand_dims(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let x = self.input(n, 0)?;
        let rank = self.fact(x)?.rank();
        let axis = ints(&*self.input_konst(n, 1, "axis")?)?;
        ensure!(axis.len() == 1, "EXPAND_DIMS takes one axis");
        let axis = normalize_axis(axis[0], rank + 1)?;
        self.wire(l, AxisOp::Add(axis), &[x])
    }

    pub(super) fn transpose(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let x = self.input(n, 0)?;
        let rank = self.fact(x)?.rank();
        let perm = ints(&*self.input_konst(n, 1, "permutation")?)?;
        let perm: Vec<usize> = perm.iter().map(|p| normalize_axis(*p, rank)).collect::<TractResult<_>>()?;
        let mut sorted = perm.clone();
        sorted.sort();
        ensure!(sorted == (0..rank).collect::<Vec<_>>(), "bad permutation {perm:?}");
        let mut x = x;
        for (i, op) in perm_to_ops(&perm).into_iter().enumerate() {
            x = self.wire(&format!("{l}.{i}"), op, &[x])?[0];
        }
        Ok(tvec!(x))
    }

    pub(super) fn concatenation(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let opts = options!(n, builtin_options_as_concatenation_options);
        let inputs = (0..n.inputs.len()).map(|k| self.input(n, k)).collect::<TractResult<Vec<_>>>()?;
        let rank = self.fact(inputs[0])?.rank();
        let axis = normalize_axis(opts.axis() as i64, rank)?;
        let y = self.wire(l, TypedConcat { axis }, &inputs)?[0];
        Ok(tvec!(self.activation(l, y, opts.fused_activation_function())?))
    }

    /// PAD, PADV2 (with a pad value) and MIRROR_PAD (reflect).
    pub(super) fn pad(&mut self, n: &Node, code: B) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let x = self.input(n, 0)?;
        let fact = self.fact(x)?;
        let pads = ints(&*self.input_konst(n, 1, "paddings")?)?;
        ensure!(pads.len() == 2 * fact.rank() && pads.iter().all(|p| *p >= 0), "bad paddings {pads:?}");
        let pads: Vec<(usize, usize)> = pads.chunks(2).map(|c| (c[0] as usize, c[1] as usize)).collect();
        let mode = if code == B::MIRROR_PAD {
            match options!(n, builtin_options_as_mirror_pad_options).mode() {
                MirrorPadMode::REFLECT => PadMode::Reflect,
                other => bail!("unsupported mirror pad mode {other:?}"),
            }
        } else if code == B::PADV2 && n.inputs.get(2).is_some_and(|i| *i >= 0) {
            let v = self.input_konst(n, 2, "pad value")?;
            PadMode::Constant(v.cast_to_dt(fact.datum_type)?.into_owned().into_arc_tensor())
        } else {
            PadMode::Constant(Tensor::zero_scalar_dt(fact.datum_type)?.into_arc_tensor())
        };
        self.wire(l, Pad { pads, mode }, &[x])
    }

    pub(super) fn strided_slice(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let opts = options!(n, builtin_options_as_strided_slice_options);
        ensure!(
            opts.ellipsis_mask() == 0 && opts.new_axis_mask() == 0,
            "ellipsis and new-axis masks are not supported"
        );
        let inputs = (0..4).map(|k| self.input(n, k)).collect::<TractResult<Vec<_>>>()?;
        let op = StridedSlice {
            optional_axes_input: None,
            optional_steps_input: Some(3),
            begin_mask: opts.begin_mask() as i64,
            end_mask: opts.end_mask() as i64,
            shrink_axis_mask: opts.shrink_axis_mask() as i64,
        };
        self.wire(l, op, &inputs)
    }

    pub(super) fn slice(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let x = self.input(n, 0)?;
        let fact = self.fact(x)?;
        let begin = ints(&*self.input_konst(n, 1, "begin")?)?;
        let size = ints(&*self.input_konst(n, 2, "size")?)?;
        ensure!(begin.len() == fact.rank() && size.len() == fact.rank(), "SLICE begin/size rank mismatch");
        let mut x = x;
        for axis in 0..fact.rank() {
            let start = begin[axis].to_dim();
            let end = if size[axis] < 0 { fact.shape[axis].clone() } else { (begin[axis] + size[axis]).to_dim() };
            if start == 0.to_dim() && end == fact.shape[axis] {
                continue;
            }
            x = self.wire(&format!("{l}.{axis}"), Slice::new(axis, start, end), &[x])?[0];
        }
        Ok(tvec!(x))
    }

    /// SPLIT: `num_splits` equal parts.
    pub(super) fn split_even(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let x = self.input(n, 1)?;
        let rank = self.fact(x)?.rank();
        let axis = normalize_axis(ints(&*self.input_konst(n, 0, "axis")?)?[0], rank)?;
        let count = options!(n, builtin_options_as_split_options).num_splits().max(1) as usize;
        let dim = self.fact(x)?.shape[axis].to_usize().context("SPLIT needs a known dimension")?;
        ensure!(dim % count == 0, "cannot split {dim} in {count}");
        self.split(l, x, axis, &vec![dim / count; count])
    }

    /// SPLIT_V: the sizes given, one of them possibly -1 (the rest).
    pub(super) fn split_v(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let x = self.input(n, 0)?;
        let fact = self.fact(x)?;
        let axis = normalize_axis(ints(&*self.input_konst(n, 2, "axis")?)?[0], fact.rank())?;
        let dim = fact.shape[axis].to_usize().context("SPLIT_V needs a known dimension")? as i64;
        let mut sizes = ints(&*self.input_konst(n, 1, "size_splits")?)?;
        let known: i64 = sizes.iter().filter(|s| **s >= 0).sum();
        if let Some(s) = sizes.iter_mut().find(|s| **s < 0) {
            *s = dim - known;
        }
        ensure!(
            sizes.iter().sum::<i64>() == dim && sizes.iter().all(|s| *s >= 0),
            "split sizes {sizes:?} do not add up to {dim}"
        );
        let sizes: Vec<usize> = sizes.iter().map(|s| *s as usize).collect();
        self.split(l, x, axis, &sizes)
    }

    fn split(&mut self, l: &str, x: OutletId, axis: usize, sizes: &[usize]) -> TractResult<TVec<OutletId>> {
        let mut start = 0;
        let mut outs = tvec!();
        for (i, s) in sizes.iter().enumerate() {
            outs.push(self.wire(&format!("{l}.{i}"), Slice::new(axis, start, start + s), &[x])?[0]);
            start += s;
        }
        Ok(outs)
    }

    pub(super) fn gather(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let opts = options!(n, builtin_options_as_gather_options);
        ensure!(opts.batch_dims() == 0, "GATHER with batch_dims is not supported");
        let x = self.input(n, 0)?;
        let idx = self.input(n, 1)?;
        let axis = normalize_axis(opts.axis() as i64, self.fact(x)?.rank())?;
        let idx = self.wire(&format!("{l}.indices"), cast(i64::datum_type()), &[idx])?[0];
        self.wire(l, Gather::new(axis), &[x, idx])
    }

    pub(super) fn resize_bilinear(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let o = options!(n, builtin_options_as_resize_bilinear_options);
        let ct = if o.align_corners() {
            CoordTransformer::AlignCorners
        } else if o.half_pixel_centers() {
            CoordTransformer::HalfPixel
        } else {
            CoordTransformer::Asymmetric
        };
        self.resize(n, ct, Interpolator::Linear, Nearest::Floor)
    }

    pub(super) fn resize_nearest_neighbor(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let o = options!(n, builtin_options_as_resize_nearest_neighbor_options);
        let (ct, nearest) = if o.align_corners() {
            (CoordTransformer::AlignCorners, Nearest::RoundPreferCeil)
        } else if o.half_pixel_centers() {
            (CoordTransformer::TfHalfPixelForNn, Nearest::Floor)
        } else {
            (CoordTransformer::Asymmetric, Nearest::Floor)
        };
        self.resize(n, ct, Interpolator::Nearest, nearest)
    }

    fn resize(
        &mut self,
        n: &Node,
        ct: CoordTransformer,
        interpolator: Interpolator,
        nearest: Nearest,
    ) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let x = self.input(n, 0)?;
        let fact = self.fact(x)?;
        ensure!(fact.rank() == 4, "resize expects NHWC");
        let size = ints(&*self.input_konst(n, 1, "size")?)?;
        ensure!(size.len() == 2 && size.iter().all(|s| *s > 0), "bad resize size {size:?}");
        let full = tensor1(&[fact.shape[0].clone(), size[0].to_dim(), size[1].to_dim(), fact.shape[3].clone()]);
        let name = self.name(&format!("{l}.sizes"));
        let sizes = self.target.add_const(name, full)?;
        let op = Resize {
            coord_transformer: ct,
            interpolator,
            nearest,
            optional_scales_input: None,
            optional_sizes_input: Some(1),
        };
        self.wire(l, op, &[x, sizes])
    }

    pub(super) fn depth_to_space(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let b = options!(n, builtin_options_as_depth_to_space_options).block_size().max(1) as usize;
        let l = n.label.as_str();
        let x = self.input(n, 0)?;
        let f = self.fact(x)?;
        ensure!(f.rank() == 4, "DEPTH_TO_SPACE expects NHWC");
        let c = f.shape[3].to_usize().context("channels must be known")?;
        ensure!(c % (b * b) == 0, "{c} channels do not split in blocks of {b}x{b}");
        let (h, w) = (f.shape[1].clone(), f.shape[2].clone());
        // [N,H,W,(by,bx,c)] -> [N,H,W,by,bx,c] -> [N,H,by,W,bx,c] -> [N,H*b,W*b,c]
        let y = self.wire(
            &format!("{l}.split"),
            AxisOp::Reshape(3, tvec!(c.to_dim()), tvec!(b.to_dim(), b.to_dim(), (c / (b * b)).to_dim())),
            &[x],
        )?[0];
        let y = self.wire(&format!("{l}.move"), AxisOp::Move(3, 2), &[y])?[0];
        let y =
            self.wire(&format!("{l}.merge_h"), AxisOp::Reshape(1, tvec!(h.clone(), b.to_dim()), tvec!(h * b)), &[y])?
                [0];
        self.wire(l, AxisOp::Reshape(2, tvec!(w.clone(), b.to_dim()), tvec!(w * b)), &[y])
    }

    pub(super) fn space_to_depth(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let b = options!(n, builtin_options_as_space_to_depth_options).block_size().max(1) as usize;
        let l = n.label.as_str();
        let x = self.input(n, 0)?;
        let f = self.fact(x)?;
        ensure!(f.rank() == 4, "SPACE_TO_DEPTH expects NHWC");
        let h = f.shape[1].to_usize().context("height must be known")?;
        let w = f.shape[2].to_usize().context("width must be known")?;
        let c = f.shape[3].clone();
        ensure!(h % b == 0 && w % b == 0, "{h}x{w} does not split in blocks of {b}");
        // [N,H,W,C] -> [N,H/b,by,W/b,bx,C] -> [N,H/b,W/b,by,bx,C] -> [N,H/b,W/b,b*b*C]
        let y = self.wire(
            &format!("{l}.split_h"),
            AxisOp::Reshape(1, tvec!(h.to_dim()), tvec!((h / b).to_dim(), b.to_dim())),
            &[x],
        )?[0];
        let y = self.wire(
            &format!("{l}.split_w"),
            AxisOp::Reshape(3, tvec!(w.to_dim()), tvec!((w / b).to_dim(), b.to_dim())),
            &[y],
        )?[0];
        let y = self.wire(&format!("{l}.move"), AxisOp::Move(2, 3), &[y])?[0];
        self.wire(l, AxisOp::Reshape(3, tvec!(b.to_dim(), b.to_dim(), c.clone()), tvec!(c * (b * b))), &[y])
    }
}
