//! `edgectl`: the operator's CLI. Its commands arrive with the fleet link.

fn main() {
    eprintln!("edgectl: no commands yet; the fleet link adds them");
    std::process::exit(2);
}
