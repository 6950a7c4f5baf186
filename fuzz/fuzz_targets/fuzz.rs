//! One libFuzzer binary for every target of `edge_agent::fuzzing`; `EDGE_FUZZ_TARGET`
//! names the one to run (fuzz/run.sh sets it).

#![no_main]

use libfuzzer_sys::fuzz_target;

fn target() -> fn(&[u8]) {
    static TARGET: std::sync::OnceLock<fn(&[u8])> = std::sync::OnceLock::new();
    *TARGET.get_or_init(|| {
        let name = std::env::var("EDGE_FUZZ_TARGET").expect("EDGE_FUZZ_TARGET names the target");
        edge_agent::fuzzing::TARGETS
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no fuzz target {name:?}"))
            .1
    })
}

fuzz_target!(|data: &[u8]| target()(data));
