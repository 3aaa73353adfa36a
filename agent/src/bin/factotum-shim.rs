//! `factotum-shim <attempt dir>`: the small per-task supervisor earlier agents with `--state-dir`
//! ran each task under (see `factotum_agent::shim`; agents now record tasks through their own
//! shells). A separate, small binary: it is started once per task, so its start-up cost counts.

const USAGE: &str = "usage: factotum-shim <attempt dir>

The per-task supervisor earlier factotum-agents with --state-dir started for each task: it runs
the command the agent wrote into <attempt dir>, records its output and exit code there, and
lets the task outlive the agent. Agents now record tasks without it. Not meant to be run by hand.";

fn main() {
    let arg = std::env::args_os().nth(1);
    match arg.as_ref().and_then(|a| a.to_str()) {
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return;
        }
        Some("-V" | "--version") => {
            println!("factotum-shim {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        _ => {}
    }
    let Some(dir) = arg.map(std::path::PathBuf::from) else {
        eprintln!("{USAGE}");
        std::process::exit(3);
    };
    std::process::exit(factotum_agent::shim::main(&dir));
}
