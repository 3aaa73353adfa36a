//! Redaction through the engine: each lease carries what its agent must redact (the run's
//! `--env` secrets and the task's own `env` values), a new leader after a failover sends the
//! same, and `--no-redact` sends nothing.

use std::time::Duration;

use chrono::DateTime;
use factotum_coordinator::{prepare, Clock, Engine, EngineConfig, MemoryStore, Store, Submission};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::support::*;

fn leader(store: MemoryStore, stop: &CancellationToken) -> Engine {
    let config = EngineConfig {
        clock: Clock::tokio(DateTime::from_timestamp(1_700_000_000, 0).unwrap()),
        ..EngineConfig::default()
    };
    Engine::start(config, store, stop.clone())
}

fn submission(no_redact: bool) -> Submission {
    let t = task("t", &[], json!({"env": {"K": "task-env-k3y", "S": "ab"}}));
    let ff = json!({"schema": "iglu:io.factotum/factfile/jsonschema/1-0-0",
                    "data": {"name": "secrets", "tasks": [t]}});
    Submission {
        factfile: ff.to_string(),
        factfile_name: "secrets.factfile".into(),
        env: Some(r#"{"token": "s3cr3t-value", "n": 3}"#.into()),
        max_output: 1024,
        allow_concurrent: true,
        no_redact,
        ..Submission::default()
    }
}

#[tokio::test(start_paused = true)]
async fn leases_carry_the_secrets_before_and_after_a_failover() {
    let store = MemoryStore::new();
    let old_stop = CancellationToken::new();
    let old = leader(store.clone(), &old_stop);
    // No agent yet: the task waits while the leader changes.
    let run = old
        .submit(prepare(submission(false)).unwrap())
        .await
        .unwrap()
        .run_id;
    let records = store.scan(&format!("runs/{run}/")).await.unwrap();
    let spec = records.iter().find(|(k, _)| k.ends_with("/spec")).unwrap();
    let spec: serde_json::Value = serde_json::from_slice(&spec.1).unwrap();
    assert_eq!(spec["redact"], json!(["s3cr3t-value"]));
    let shown = records.iter().find(|(k, _)| k.ends_with("/shown"));
    let shown = String::from_utf8(shown.expect("the factfile payloads show").1.clone()).unwrap();
    assert!(
        !shown.contains("task-env-k3y") && shown.contains("[redacted]"),
        "{shown}"
    );
    old_stop.cancel();
    tokio::time::sleep(Duration::from_millis(10)).await;

    let new = leader(store, &CancellationToken::new());
    assert_eq!(new.recover().await.unwrap(), 1);
    let mut a = FakeAgent::connect(&new, AgentSpec::named("a")).await;
    let lease = a.lease().await;
    assert_eq!(lease.redact, ["s3cr3t-value", "task-env-k3y"]);
    a.finish(&lease, 0).await;
    assert_eq!(finished(&new, &run).await.state.as_str(), "SUCCEEDED");
}

#[tokio::test(start_paused = true)]
async fn no_redact_sends_nothing_to_redact() {
    let store = MemoryStore::new();
    let engine = leader(store.clone(), &CancellationToken::new());
    let mut a = FakeAgent::connect(&engine, AgentSpec::named("a")).await;
    let run = engine
        .submit(prepare(submission(true)).unwrap())
        .await
        .unwrap()
        .run_id;
    let lease = a.lease().await;
    assert!(lease.redact.is_empty(), "{:?}", lease.redact);
    let records = store.scan(&format!("runs/{run}/")).await.unwrap();
    assert!(records.iter().all(|(k, _)| !k.ends_with("/shown")));
    a.finish(&lease, 0).await;
    assert_eq!(finished(&engine, &run).await.state.as_str(), "SUCCEEDED");
}
