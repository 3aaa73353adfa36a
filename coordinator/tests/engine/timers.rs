//! Deadlines under paused time: task timeouts and retry delays fire when the clock says so.

use std::time::Duration;

use factotum_coordinator::EngineConfig;
use factotum_proto::coordinator_message::Msg;
use serde_json::json;

use crate::support::*;

#[tokio::test(start_paused = true)]
async fn a_task_timeout_cancels_the_attempt_and_fails_it() {
    let slow = task("slow", &[], json!({"timeout": 30}));
    let Started {
        engine,
        agent: mut a,
        run,
        lease,
    } = started(EngineConfig::default(), vec![slow], json!({})).await;
    let leased = tokio::time::Instant::now();
    match a.next().await {
        Some(Msg::Cancel(c)) => assert_eq!(c.lease, lease.lease),
        other => panic!("expected a cancel, got {other:?}"),
    }
    let waited = leased.elapsed();
    assert!(
        (Duration::from_secs(30)..Duration::from_secs(31)).contains(&waited),
        "cancelled after {waited:?}"
    );
    a.finish(&lease, 143).await; // what TERM makes of it
    let info = finished(&engine, &run).await;
    assert_eq!(state_of(&info, "slow"), "FAILED");
    assert_eq!(
        info.tasks[0].error_message.as_deref(),
        Some("the task timed out after 30s")
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_starts_after_its_delay_and_not_before() {
    let flaky = task(
        "flaky",
        &[],
        json!({"retry": {"attempts": 3, "delaySeconds": 40, "backoff": 2}}),
    );
    let Started {
        engine,
        agent: mut a,
        run,
        mut lease,
    } = started(EngineConfig::default(), vec![flaky], json!({})).await;
    for (attempt, delay) in [(2, 40), (3, 80)] {
        a.finish(&lease, 1).await;
        let failed = tokio::time::Instant::now();
        lease = a.lease().await;
        let waited = failed.elapsed();
        assert_eq!(lease.lease.as_ref().unwrap().attempt, attempt);
        assert!(
            (Duration::from_secs(delay)..Duration::from_secs(delay + 1)).contains(&waited),
            "attempt {attempt} after {waited:?}"
        );
    }
    a.finish(&lease, 0).await;
    let info = finished(&engine, &run).await;
    assert_eq!(state_of(&info, "flaky"), "SUCCEEDED");
    assert_eq!(info.tasks[0].attempt, 3);
}

#[tokio::test(start_paused = true)]
async fn a_job_timeout_stops_what_runs_and_skips_the_rest() {
    let tasks = vec![
        task("first", &[], json!({})),
        task("second", &["first"], json!({})),
    ];
    let Started {
        engine,
        agent: mut a,
        run,
        lease,
    } = started(EngineConfig::default(), tasks, json!({"timeout": 60})).await;
    match a.next().await {
        Some(Msg::Cancel(_)) => {}
        other => panic!("expected a cancel, got {other:?}"),
    }
    a.finish(&lease, 143).await;
    let info = finished(&engine, &run).await;
    assert_eq!(info.state.as_str(), "FAILED");
    assert_eq!(state_of(&info, "second"), "SKIPPED");
    assert!(
        info.duration >= Duration::from_secs(60),
        "{:?}",
        info.duration
    );
}
