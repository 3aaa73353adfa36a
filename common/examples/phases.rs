//! Times each phase of loading a factfile: `cargo run --release -p factotum-common --example phases FILE`.
use std::time::Instant;

use factotum_common::template::Vars;
use factotum_common::{Factfile, Plan};

fn main() {
    let path = std::env::args().nth(1).expect("usage: phases FILE");
    let t0 = Instant::now();
    let text = std::fs::read_to_string(&path).expect("readable file");
    let t1 = Instant::now();
    let ta = Instant::now();
    let raw: Factfile = serde_json::from_str(&text).expect("x");
    println!(
        "typed parse {:?} ({} tasks)",
        ta.elapsed(),
        raw.data.tasks.len()
    );
    drop(raw);
    let t1 = Instant::now();
    let vars = Vars::new(&serde_json::Value::Null, &Default::default()).expect("vars");
    let ff = Factfile::parse(&text, &vars).expect("valid factfile");
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
