//! Resource variables (with CALL_ONCE initial values) and IF, with a condition known at
//! load and one computed at run time.

use super::*;

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
