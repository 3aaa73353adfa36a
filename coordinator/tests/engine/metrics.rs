//! What the engine records in the metrics (issue 13), with the paused clock: transitions of
//! runs and tasks, how long a ready task waited for an agent and how long it ran, the oldest
//! ready task's age while no agent can take it, and the agents' census.

use std::sync::Arc;
use std::time::Duration;

use factotum_coordinator::metrics::Metrics;
use factotum_coordinator::{Engine, EngineConfig};
use factotum_proto::{agent_message, attempt_result, AttemptResult};
use serde_json::json;

use crate::support::*;

/// The value of the sample `name` (with its labels, as exported), or 0 when absent.
fn value(m: &Metrics, name: &str) -> f64 {
    let text = m.encode();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// An engine recording into fresh metrics, and a run of one task submitted to it.
async fn one_task_run() -> (Arc<Metrics>, Engine, String) {
    let metrics = Arc::new(Metrics::new());
    let engine = memory_engine(EngineConfig {
        metrics: Arc::clone(&metrics),
        ..EngineConfig::default()
    });
    let run = engine
        .submit(spec(vec![task("only", &[], json!({}))], json!({})))
        .await
        .unwrap()
        .run_id;
    (metrics, engine, run)
}

#[tokio::test(start_paused = true)]
async fn a_task_that_waited_for_an_agent_is_counted_timed_and_its_wait_seen_while_it_waits() {
    let (metrics, engine, run) = one_task_run().await;
    // No agent for 30 s: the task waits, and the gauges say so once sampled (every second:
    // the sleeps end between samples, never on one).
    tokio::time::sleep(Duration::from_millis(30_500)).await;
    assert_eq!(value(&metrics, "factotum_runs_active"), 1.0);
    assert_eq!(value(&metrics, "factotum_tasks{state=\"ready\"}"), 1.0);
    let oldest = value(&metrics, "factotum_oldest_ready_task_age_seconds");
    assert!((29.0..=30.5).contains(&oldest), "{oldest}");
    assert_eq!(value(&metrics, "factotum_leader"), 1.0);

    let mut agent = FakeAgent::connect(&engine, AgentSpec::named("a")).await;
    let lease = agent.lease().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(value(&metrics, "factotum_leases_in_flight"), 1.0);
    assert_eq!(value(&metrics, "factotum_agents{state=\"connected\"}"), 1.0);
    assert_eq!(
        value(&metrics, "factotum_oldest_ready_task_age_seconds"),
        0.0
    );
    // The agent measures how long its process ran.
    agent
        .say(agent_message::Msg::AttemptResult(AttemptResult {
            lease: lease.lease.clone(),
            outcome: Some(attempt_result::Outcome::ExitCode(0)),
            duration_nanos: 4_500_000_000,
            ..AttemptResult::default()
        }))
        .await;
    finished(&engine, &run).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    assert_eq!(
        value(&metrics, "factotum_task_start_latency_seconds_count"),
        1.0
    );
    let waited = value(&metrics, "factotum_task_start_latency_seconds_sum");
    assert!((30.0..=31.0).contains(&waited), "{waited}");
    assert_eq!(value(&metrics, "factotum_task_duration_seconds_count"), 1.0);
    let ran = value(&metrics, "factotum_task_duration_seconds_sum");
    assert_eq!(ran, 4.5);
    for (name, n) in [
        ("factotum_run_transitions_total{state=\"waiting\"}", 1.0),
        ("factotum_run_transitions_total{state=\"running\"}", 1.0),
        ("factotum_run_transitions_total{state=\"succeeded\"}", 1.0),
        ("factotum_task_transitions_total{state=\"running\"}", 1.0),
        ("factotum_task_transitions_total{state=\"succeeded\"}", 1.0),
        ("factotum_runs_active", 0.0),
        ("factotum_leases_in_flight", 0.0),
    ] {
        assert_eq!(value(&metrics, name), n, "{name}:\n{}", metrics.encode());
    }
    assert!(value(&metrics, "factotum_store_transaction_seconds_count") >= 2.0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_run_is_counted_as_cancelled() {
    let (metrics, engine, run) = one_task_run().await;
    engine.cancel(&run, "job cancelled").await.unwrap();
    finished(&engine, &run).await;
    assert_eq!(
        value(
            &metrics,
            "factotum_run_transitions_total{state=\"cancelled\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&metrics, "factotum_run_transitions_total{state=\"failed\"}"),
        0.0
    );
}
