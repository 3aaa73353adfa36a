//! Bounded messages (issue 10): whatever `--max-stdouterr-size` asked and whatever an agent
//! sends, a task's result keeps at most `MAX_TAIL` characters and bytes of each stream, so its
//! store record always fits an etcd request (1.5 MiB by default).

use factotum_common::run::MAX_TAIL;
use factotum_coordinator::{prepare, EngineConfig, StoreOp, Submission};
use factotum_proto::{agent_message, attempt_result, AttemptResult};
use serde_json::json;

use crate::support::*;

/// etcd's default request limit.
const ETCD_REQUEST: usize = 3 * 1024 * 1024 / 2;

#[tokio::test(start_paused = true)]
async fn an_oversized_result_is_cut_to_what_a_store_record_can_hold() {
    let store = TestStore::default();
    let engine = engine(store.clone(), EngineConfig::default());
    let mut a = FakeAgent::connect(&engine, AgentSpec::named("a")).await;
    let ff = json!({"schema": "iglu:io.factotum/factfile/jsonschema/1-0-0",
                    "data": {"name": "big", "tasks": [task("big", &[], json!({}))]}});
    let spec = prepare(Submission {
        factfile: ff.to_string(),
        factfile_name: "big.factfile".into(),
        max_output: 10_000_000,
        allow_concurrent: true,
        ..Submission::default()
    })
    .unwrap();
    assert_eq!(spec.max_output, MAX_TAIL, "--max-stdouterr-size is clamped");
    let run = engine.submit(spec).await.unwrap().run_id;
    let lease = a.lease().await;
    // What an agent that does not cut its tails could send: 1.2 MB of two-byte characters on
    // each stream (under MAX_TAIL characters' worth of four-byte ones, over MAX_TAIL bytes).
    let big = "é".repeat(600 * 1024);
    a.say(agent_message::Msg::AttemptResult(AttemptResult {
        lease: lease.lease.clone(),
        outcome: Some(attempt_result::Outcome::ExitCode(0)),
        stdout_tail: big.clone(),
        stderr_tail: big.clone(),
        ..AttemptResult::default()
    }))
    .await;
    let info = finished(&engine, &run).await;
    assert_eq!(state_of(&info, "big"), "SUCCEEDED");
    let largest = store
        .commits()
        .iter()
        .flatten()
        .filter_map(|op| match op {
            StoreOp::Put { key, value } => Some((key.clone(), value.len())),
            _ => None,
        })
        .max_by_key(|(_, len)| *len)
        .unwrap();
    assert!(
        largest.1 > MAX_TAIL && largest.1 < ETCD_REQUEST,
        "the largest record, {} ({} bytes), holds both tails cut to {MAX_TAIL} bytes",
        largest.0,
        largest.1
    );
}
