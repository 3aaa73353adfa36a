//! Times each phase of loading a factfile, to see where `factotum validate` spends its time:
//! `cargo run --release -p factotum-common --example phases FILE`.
use std::time::Instant;

use factotum_common::template::Vars;
use factotum_common::{Factfile, Plan};

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: phases FILE");
        std::process::exit(3);
    };
    let t0 = Instant::now();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read {path}: {e}");
            std::process::exit(1);
        }
    };
    let t1 = Instant::now();
    let vars =
        Vars::new(&serde_json::Value::Null, &Default::default()).unwrap_or_else(|e| panic!("{e}"));
    let ff = match Factfile::parse(&text, &vars) {
        Ok(ff) => ff,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        }
    };
    let t2 = Instant::now();
    let plan = Plan::new(&ff);
    let t3 = Instant::now();
    println!(
        "read {:?}  parse+validate {:?}  plan {:?}  ({} tasks)",
        t1 - t0,
        t2 - t1,
        t3 - t2,
        plan.len()
    );
}
