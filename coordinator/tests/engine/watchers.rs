//! Watchers that stop reading cost bounded memory: the engine queues at most `watch_buffer`
//! bytes of output for one, skips the rest with a count, and always delivers transitions and
//! the end.

use factotum_coordinator::{EngineConfig, WatchEvent};
use factotum_proto::{agent_message, Output};
use serde_json::json;

use crate::support::*;

#[tokio::test(start_paused = true)]
async fn a_watcher_that_stops_reading_holds_at_most_its_buffer_and_learns_what_it_missed() {
    let config = EngineConfig {
        watch_buffer: 10 * 1024,
        ..EngineConfig::default()
    };
    let engine = memory_engine(config);
    let mut a = FakeAgent::connect(&engine, AgentSpec::named("a")).await;
    let submitted = engine
        .submit(spec(vec![task("chatty", &[], json!({}))], json!({})))
        .await
        .unwrap();
    let mut stalled = submitted.watch;
    let mut others = vec![];
    for _ in 0..3 {
        others.push(engine.watch(&submitted.run_id).await.unwrap());
    }
    let lease = a.lease().await;
    let line = "x".repeat(100);
    for _ in 0..10_000 {
        a.say(agent_message::Msg::Output(Output {
            lease: lease.lease.clone(),
            stream: 0,
            line: line.clone(),
            continued: false,
        }))
        .await;
    }
    a.finish(&lease, 0).await;
    let info = finished(&engine, &submitted.run_id).await; // a fresh watcher still sees the end
    assert_eq!(info.state.as_str(), "SUCCEEDED");
    for w in others.iter().chain([&stalled]) {
        assert!(
            w.queued_output() <= 10 * 1024,
            "{} bytes of output queued for one watcher",
            w.queued_output()
        );
    }
    let (mut lines, mut skipped, mut done) = (0u64, 0u64, false);
    while let Some(ev) = stalled.recv().await {
        match ev {
            WatchEvent::Output { .. } => lines += 1,
            WatchEvent::Lagged { skipped: n } => skipped += n,
            WatchEvent::Done(_) => done = true,
            _ => {}
        }
    }
    assert!(done, "the end is never skipped");
    assert_eq!(
        lines + skipped,
        10_000,
        "every line is either sent or counted"
    );
    assert!(
        lines <= 103,
        "{lines} lines queued for a watcher that did not read"
    );
    assert_eq!(stalled.queued_output(), 0);
}
