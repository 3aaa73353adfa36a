//! Agents that go silent, leave, come back, or come back without their tasks.

use std::time::Duration;

use factotum_coordinator::EngineConfig;
use factotum_proto::coordinator_message::Msg;
use serde_json::json;

use crate::support::*;

fn with_lost_after(secs: u64) -> EngineConfig {
    EngineConfig {
        lost_after: Some(Duration::from_secs(secs)),
        ..EngineConfig::default()
    }
}

fn error_of(info: &factotum_coordinator::RunInfo, task: &str) -> String {
    let t = info.tasks.iter().find(|t| &*t.name == task).unwrap();
    t.error_message.clone().unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn a_silent_agent_is_lost_after_lost_after_and_a_heartbeating_one_is_not() {
    let engine = memory_engine(with_lost_after(15));
    let mut quiet = FakeAgent::connect(&engine, AgentSpec::named("quiet")).await;
    let run = engine
        .submit(spec(vec![task("t", &[], json!({}))], json!({})))
        .await
        .unwrap();
    quiet.lease().await;
    let alive = FakeAgent::connect(&engine, AgentSpec::named("alive")).await;
    let start = tokio::time::Instant::now();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        alive.heartbeat().await;
    }
    let info = engine.get_run(&run.run_id).await.unwrap();
    assert_eq!(state_of(&info, "t"), "RUNNING", "10 s of silence is not 15");
    let info = finished(&engine, &run.run_id).await;
    let lost_at = start.elapsed();
    assert!(
        (Duration::from_secs(15)..Duration::from_secs(20)).contains(&lost_at),
        "lost after {lost_at:?}"
    );
    assert_eq!(state_of(&info, "t"), "FAILED");
    assert_eq!(error_of(&info, "t"), "agent quiet lost");
    let agents = engine.list_agents().await.unwrap();
    assert!(agents.iter().any(|a| a.agent_id == "alive"), "{agents:?}");
    assert!(!agents.iter().any(|a| a.agent_id == "quiet"), "{agents:?}");
}

#[tokio::test(start_paused = true)]
async fn an_agent_that_reconnects_reattaches_its_attempt_and_nothing_runs_twice() {
    let Started {
        engine,
        agent: a,
        run,
        lease,
    } = started(
        with_lost_after(15),
        vec![task("t", &[], json!({}))],
        json!({}),
    )
    .await;
    drop(a); // the session breaks
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut a = FakeAgent::connect(
        &engine,
        AgentSpec {
            running: vec![lease.lease.clone().unwrap()],
            ..AgentSpec::named("a")
        },
    )
    .await;
    assert!(
        a.quiet_for(Duration::from_secs(5)).await.is_none(),
        "re-attached: no second lease, no cancel"
    );
    a.finish(&lease, 0).await;
    let info = finished(&engine, &run).await;
    assert_eq!(state_of(&info, "t"), "SUCCEEDED");
    assert_eq!(info.tasks[0].attempt, 1);
}

#[tokio::test(start_paused = true)]
async fn an_agent_back_without_its_task_fails_it() {
    let Started {
        engine,
        agent: a,
        run,
        lease: _lease,
    } = started(
        with_lost_after(15),
        vec![task("t", &[], json!({}))],
        json!({}),
    )
    .await;
    drop(a);
    let _a = FakeAgent::connect(&engine, AgentSpec::named("a")).await;
    let info = finished(&engine, &run).await;
    assert_eq!(state_of(&info, "t"), "FAILED");
    assert_eq!(error_of(&info, "t"), "agent a restarted without the task");
}

#[tokio::test(start_paused = true)]
async fn without_lost_after_a_disconnected_agent_is_lost_at_once() {
    let Started {
        engine,
        agent: a,
        run,
        lease: _lease,
    } = started(
        EngineConfig::default(),
        vec![task("t", &[], json!({}))],
        json!({}),
    )
    .await;
    drop(a);
    let info = finished(&engine, &run).await;
    assert_eq!(error_of(&info, "t"), "agent a lost");
}

#[tokio::test(start_paused = true)]
async fn an_attempt_nobody_wants_is_cancelled_when_its_agent_says_hello() {
    let engine = memory_engine(EngineConfig::default());
    let stale = factotum_proto::LeaseRef {
        run_id: "gone".into(),
        task: 0,
        attempt: 1,
        epoch: 0,
    };
    let mut a = FakeAgent::connect(
        &engine,
        AgentSpec {
            running: vec![stale.clone()],
            ..AgentSpec::named("a")
        },
    )
    .await;
    match a.next().await {
        Some(Msg::Cancel(c)) => assert_eq!(c.lease, Some(stale)),
        other => panic!("expected a cancel, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn on_lost_retry_runs_a_new_attempt_on_another_agent() {
    let t = task("t", &[], json!({"onLost": "retry"}));
    let Started {
        engine,
        agent: a,
        run,
        lease: first,
    } = started(with_lost_after(15), vec![t], json!({})).await;
    let mut b = FakeAgent::connect(&engine, AgentSpec::named("b")).await;
    drop(a);
    // b heartbeats while a stays away; after lost_after, attempt 2 goes to b.
    let keep_b_alive = async {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            b.heartbeat().await;
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(20)) => {}
        _ = keep_b_alive => {}
    }
    let second = b.lease().await;
    assert_eq!(second.lease.as_ref().unwrap().attempt, 2);
    assert_ne!(first.lease, second.lease);
    b.finish(&second, 0).await;
    assert_eq!(state_of(&finished(&engine, &run).await, "t"), "SUCCEEDED");
}
