//! Element-wise operators, quantisation and constants (DEQUANTIZE of fp16 and int8
//! weights, QUANTIZE, DENSIFY).

use super::*;

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
