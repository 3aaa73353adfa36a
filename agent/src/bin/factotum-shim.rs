//! `factotum-shim <attempt dir>`: the small per-task supervisor an agent with `--state-dir` runs
//! each task under (see `factotum_agent::shim`). A separate, small binary: it is started once
//! per task, so its start-up cost counts.

fn main() {
    let Some(dir) = std::env::args_os().nth(1).map(std::path::PathBuf::from) else {
        eprintln!("usage: factotum-shim <attempt dir>");
        std::process::exit(3);
    };
    std::process::exit(factotum_agent::shim::main(&dir));
}
