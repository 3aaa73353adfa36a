//! The queue between the API and the engine is bounded (issue 12): while the engine is held
//! up (here, by a store that does not answer), at most `max_queued_calls` client calls wait
//! for it and the next is refused at once with `EngineError::Busy`; when the engine moves on,
//! every queued call is answered.

use std::sync::atomic::Ordering;
use std::time::Duration;

use factotum_coordinator::{EngineConfig, EngineError};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn calls_past_max_queued_calls_are_refused_while_the_engine_is_busy() {
    let store = TestStore::default();
    let config = EngineConfig {
        max_queued_calls: 3,
        ..EngineConfig::default()
    };
    let engine = engine(store.clone(), config);
    let held = store.hold.lock().await;
    // The engine takes the submission and waits on the store with it.
    let submitting = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .submit(spec(vec![task("a", &[], json!({}))], json!({})))
                .await
        })
    };
    while store.waiting.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Three calls fit in the queue; they wait.
    let queued: Vec<_> = (0..3)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.list_agents().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(queued.iter().all(|q| !q.is_finished()));
    // The fourth is refused at once, whatever the call.
    assert!(matches!(
        engine.list_agents().await,
        Err(EngineError::Busy(3))
    ));
    assert!(matches!(
        engine.get_run("nope").await,
        Err(EngineError::Busy(3))
    ));
    drop(held);
    submitting
        .await
        .unwrap()
        .expect("the held submission commits");
    for q in queued {
        q.await.unwrap().expect("a queued call is answered");
    }
    // With room again, calls go through.
    engine.list_agents().await.unwrap();
}
