//! Reductions: ARG_MAX/ARG_MIN and MEAN.

use super::*;

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
