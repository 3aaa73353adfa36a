//! Group commit and the store's failures: transactions within etcd's limits with webhook
//! events first, a store that fails then recovers, and a fence that fails.

use std::time::Duration;

use factotum_coordinator::{EngineConfig, EngineError, RunQuery, Store, StoreOp};
use factotum_proto::coordinator_message::Msg;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::support::*;

#[tokio::test(start_paused = true)]
async fn a_large_turn_is_written_in_transactions_of_at_most_max_ops_per_commit_outbox_first() {
    use factotum_coordinator::store::MAX_OPS_PER_COMMIT;
    let store = TestStore::default();
    let config = EngineConfig {
        // Nothing listens there: deliveries retry in the background, which is not under test.
        webhooks: vec!["http://127.0.0.1:9/hook".into()],
        ..EngineConfig::default()
    };
    let engine = engine(store.clone(), config);
    let mut a = FakeAgent::connect(&engine, AgentSpec::named("a")).await;
    let tasks = (0..300)
        .map(|i| task(&format!("t{i}"), &[], json!({})))
        .collect();
    let run = engine.submit(spec(tasks, json!({}))).await.unwrap();
    for _ in 0..300 {
        a.lease().await;
    }
    let commits = store.commits();
    assert!(
        commits.iter().all(|c| c.len() <= MAX_OPS_PER_COMMIT),
        "{:?}",
        commits.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert!(
        commits.iter().any(|c| c.len() == MAX_OPS_PER_COMMIT),
        "the lease turn spans several transactions"
    );
    // Each batch ends with its run's state record; inside a batch, outbox entries come first.
    for ops in &commits {
        let mut in_batch_body = false;
        for op in ops {
            let k = key(op);
            if k.starts_with("outbox/") {
                assert!(
                    !in_batch_body,
                    "an outbox entry after a record of its batch: {k}"
                );
            } else {
                in_batch_body = !k.ends_with("/state");
            }
        }
    }
    let recorded = store
        .scan(&format!("runs/{}/tasks/", run.run_id))
        .await
        .unwrap();
    assert_eq!(
        recorded.len(),
        300,
        "every task's RUNNING record is written"
    );
}

#[tokio::test(start_paused = true)]
async fn a_store_outage_stalls_dispatch_then_everything_resumes_and_nothing_is_lost() {
    let store = TestStore::default();
    let engine = engine(store.clone(), EngineConfig::default());
    let mut a = FakeAgent::connect(&engine, AgentSpec::named("a")).await;
    let tasks = vec![
        task("first", &[], json!({})),
        task("second", &["first"], json!({})),
    ];
    let run = engine.submit(spec(tasks, json!({}))).await.unwrap();
    let first = a.lease().await;
    store.set_down(true);
    a.finish(&first, 0).await;
    // Not recorded: no acknowledgement (the agent keeps the result) and no new lease.
    assert!(a.quiet_for(Duration::from_secs(10)).await.is_none());
    store.set_down(false);
    match a.next().await {
        Some(Msg::Ack(ack)) => assert_eq!(ack.lease, first.lease),
        other => panic!("expected the ack of the stalled result, got {other:?}"),
    }
    let second = a.lease().await;
    assert_eq!(second.task_name, "second");
    a.finish(&second, 0).await;
    let info = finished(&engine, &run.run_id).await;
    assert_eq!(info.state.as_str(), "SUCCEEDED");
    let records = store
        .scan(&format!("runs/{}/tasks/", run.run_id))
        .await
        .unwrap();
    assert!(
        records
            .iter()
            .all(|(_, v)| String::from_utf8_lossy(v).contains("SUCCEEDED")),
        "both results recorded"
    );
    let state = store
        .scan(&format!("runs/{}/state", run.run_id))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&state[0].1).contains("SUCCEEDED"));
}

#[tokio::test(start_paused = true)]
async fn a_failed_fence_stops_the_engine_and_sends_nothing_more() {
    let store = TestStore::default();
    let fenced = CancellationToken::new();
    let config = EngineConfig {
        fenced: fenced.clone(),
        ..EngineConfig::default()
    };
    let engine = engine(store.clone(), config);
    let mut a = FakeAgent::connect(&engine, AgentSpec::named("a")).await;
    let tasks = vec![
        task("first", &[], json!({})),
        task("second", &["first"], json!({})),
    ];
    engine.submit(spec(tasks, json!({}))).await.unwrap();
    let first = a.lease().await;
    store
        .fenced
        .store(true, std::sync::atomic::Ordering::SeqCst);
    a.finish(&first, 0).await;
    tokio::time::timeout(Duration::from_secs(10), fenced.cancelled())
        .await
        .expect("the engine did not step down");
    // Its session ends with it, without an ack or a lease a deposed leader must not send.
    assert!(a.quiet_for(Duration::from_secs(10)).await.is_none());
    assert!(matches!(
        engine.list_runs(RunQuery::default()).await,
        Err(EngineError::Stopped)
    ));
    let writes: usize = store.commits().iter().map(Vec::len).sum();
    assert!(writes > 0);
    assert!(!store
        .commits()
        .concat()
        .iter()
        .any(|op| matches!(op, StoreOp::Put { key, value } if key.contains("/tasks/") && String::from_utf8_lossy(value).contains("SUCCEEDED"))));
}
