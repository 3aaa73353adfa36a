//! Placement through the engine: what agents are leased, and the reason a run gives while its
//! tasks wait.

use std::time::Duration;

use factotum_coordinator::EngineConfig;
use serde_json::json;

use crate::support::*;

fn independent(n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| task(&format!("t{i}"), &[], json!({})))
        .collect()
}

async fn reason(engine: &factotum_coordinator::Engine, run: &str) -> Option<String> {
    engine.get_run(run).await.unwrap().waiting_reason
}

#[tokio::test(start_paused = true)]
async fn a_run_waits_with_its_reason_until_an_agent_connects() {
    let engine = memory_engine(EngineConfig::default());
    let run = engine
        .submit(spec(independent(1), json!({})))
        .await
        .unwrap();
    assert_eq!(
        reason(&engine, &run.run_id).await.as_deref(),
        Some("no agent is connected")
    );
    let mut a = FakeAgent::connect(&engine, AgentSpec::named("a")).await;
    let lease = a.lease().await;
    assert_eq!(lease.task_name, "t0");
    a.finish(&lease, 0).await;
    let info = finished(&engine, &run.run_id).await;
    assert_eq!(state_of(&info, "t0"), "SUCCEEDED");
    assert_eq!(info.tasks[0].agent.as_deref(), Some("a"));
    assert_eq!(info.waiting_reason, None);
}

#[tokio::test(start_paused = true)]
async fn sticky_keeps_a_run_on_one_agent_and_spread_uses_both() {
    let engine = memory_engine(EngineConfig::default());
    let mut a = FakeAgent::connect(&engine, AgentSpec::named("a")).await;
    let mut b = FakeAgent::connect(&engine, AgentSpec::named("b")).await;
    engine
        .submit(spec(independent(4), json!({})))
        .await
        .unwrap();
    for _ in 0..4 {
        a.lease().await;
    }
    assert!(
        b.quiet_for(Duration::from_secs(5)).await.is_none(),
        "sticky: b gets nothing"
    );

    let engine = memory_engine(EngineConfig::default());
    let mut a = FakeAgent::connect(&engine, AgentSpec::named("a")).await;
    let mut b = FakeAgent::connect(&engine, AgentSpec::named("b")).await;
    let spread = spec(independent(4), json!({"placement": "spread"}));
    engine.submit(spread).await.unwrap();
    for _ in 0..2 {
        a.lease().await;
        b.lease().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_agent_makes_the_rest_wait_and_a_freed_slot_places_the_next() {
    let engine = memory_engine(EngineConfig::default());
    let mut a = FakeAgent::connect(
        &engine,
        AgentSpec {
            slots: 1,
            ..AgentSpec::named("a")
        },
    )
    .await;
    let run = engine
        .submit(spec(independent(2), json!({})))
        .await
        .unwrap();
    let first = a.lease().await;
    assert_eq!(
        reason(&engine, &run.run_id).await.as_deref(),
        Some("waiting for a free slot on agent a (sticky placement)")
    );
    assert!(a.quiet_for(Duration::from_secs(5)).await.is_none());
    a.finish(&first, 0).await;
    let second = a.lease().await;
    assert_ne!(first.task_name, second.task_name);
    a.finish(&second, 0).await;
    let info = finished(&engine, &run.run_id).await;
    assert_eq!(info.state.as_str(), "SUCCEEDED");
}

#[tokio::test(start_paused = true)]
async fn spread_on_busy_agents_says_every_eligible_agent_is_busy() {
    let engine = memory_engine(EngineConfig::default());
    let mut a = FakeAgent::connect(
        &engine,
        AgentSpec {
            slots: 1,
            ..AgentSpec::named("a")
        },
    )
    .await;
    let run = engine
        .submit(spec(independent(2), json!({"placement": "spread"})))
        .await
        .unwrap();
    a.lease().await;
    assert_eq!(
        reason(&engine, &run.run_id).await.as_deref(),
        Some("every eligible agent is busy")
    );
}

#[tokio::test(start_paused = true)]
async fn labels_route_a_task_and_its_reason_names_what_no_agent_has() {
    let engine = memory_engine(EngineConfig::default());
    let mut plain = FakeAgent::connect(&engine, AgentSpec::named("plain")).await;
    let gpu_task = task(
        "train",
        &[],
        json!({"constraints": {"labels": {"gpu": "yes"}}}),
    );
    let run = engine
        .submit(spec(vec![gpu_task], json!({})))
        .await
        .unwrap();
    assert_eq!(
        reason(&engine, &run.run_id).await.as_deref(),
        Some("task 'train': no connected agent has label gpu=yes")
    );
    assert!(plain.quiet_for(Duration::from_secs(5)).await.is_none());
    let mut gpu = FakeAgent::connect(
        &engine,
        AgentSpec {
            labels: &[("gpu", "yes")],
            ..AgentSpec::named("gpu")
        },
    )
    .await;
    let lease = gpu.lease().await;
    assert_eq!(lease.task_name, "train");
    gpu.finish(&lease, 0).await;
    assert_eq!(
        finished(&engine, &run.run_id).await.state.as_str(),
        "SUCCEEDED"
    );
}

#[tokio::test(start_paused = true)]
async fn max_parallel_holds_back_ready_tasks_and_says_so() {
    let engine = memory_engine(EngineConfig::default());
    let mut a = FakeAgent::connect(&engine, AgentSpec::named("a")).await;
    let run = engine
        .submit(spec(independent(3), json!({"maxParallel": 1})))
        .await
        .unwrap();
    let mut lease = a.lease().await;
    assert_eq!(
        reason(&engine, &run.run_id).await.as_deref(),
        Some("2 task(s) ready, held back by the job's maxParallel of 1")
    );
    for _ in 0..2 {
        assert!(
            a.quiet_for(Duration::from_secs(1)).await.is_none(),
            "one at a time"
        );
        a.finish(&lease, 0).await;
        lease = a.lease().await;
    }
    a.finish(&lease, 0).await;
    assert_eq!(
        finished(&engine, &run.run_id).await.state.as_str(),
        "SUCCEEDED"
    );
}
