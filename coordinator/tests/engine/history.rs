//! Finished runs leave the store past `history_max_runs` or `history_max_age`, and a new leader
//! reads a store of many runs in pages.

use std::time::Duration;

use factotum_coordinator::{EngineConfig, Store};
use serde_json::json;

use crate::support::*;

async fn run_one(engine: &factotum_coordinator::Engine, a: &mut FakeAgent) -> String {
    let run = engine
        .submit(spec(vec![task("t", &[], json!({}))], json!({})))
        .await
        .unwrap()
        .run_id;
    let lease = a.lease().await;
    a.finish(&lease, 0).await;
    finished(engine, &run).await;
    run
}

async fn stored(store: &TestStore, run: &str) -> bool {
    !store
        .scan(&format!("runs/{run}/"))
        .await
        .unwrap()
        .is_empty()
}

#[tokio::test(start_paused = true)]
async fn the_oldest_finished_runs_leave_the_store_past_the_count() {
    let store = TestStore::default();
    let config = EngineConfig {
        history_max_runs: 2,
        ..EngineConfig::default()
    };
    let engine = engine(store.clone(), config);
    let mut a = FakeAgent::connect(&engine, AgentSpec::named("a")).await;
    let mut runs = vec![];
    for _ in 0..3 {
        runs.push(run_one(&engine, &mut a).await);
    }
    // The deletion goes with the next turn's writes: let one happen.
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(!stored(&store, &runs[0]).await, "the oldest run is gone");
    assert!(stored(&store, &runs[1]).await);
    assert!(stored(&store, &runs[2]).await);
}

#[tokio::test(start_paused = true)]
async fn finished_runs_leave_the_store_after_the_age() {
    let store = TestStore::default();
    let config = EngineConfig {
        history_max_age: Duration::from_secs(600),
        ..EngineConfig::default()
    };
    let engine = engine(store.clone(), config);
    let mut a = FakeAgent::connect(&engine, AgentSpec::named("a")).await;
    let run = run_one(&engine, &mut a).await;
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(stored(&store, &run).await, "not yet 10 minutes old");
    tokio::time::sleep(Duration::from_secs(400)).await;
    assert!(
        !stored(&store, &run).await,
        "older than 10 minutes: deleted"
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_reads_many_runs_in_pages_and_trims_them() {
    let store = TestStore::default();
    let engine1 = engine(store.clone(), EngineConfig::default());
    let mut a = FakeAgent::connect(&engine1, AgentSpec::named("a")).await;
    // 3 runs of 1,000 tasks: over one page of keys each.
    let mut runs = vec![];
    for _ in 0..3 {
        let tasks = (0..1000)
            .map(|i| task(&format!("t{i}"), &[], json!({})))
            .collect();
        let run = engine1
            .submit(spec(tasks, json!({"placement": "spread"})))
            .await
            .unwrap()
            .run_id;
        for _ in 0..1000 {
            let lease = a.lease().await;
            a.finish(&lease, 0).await;
        }
        finished(&engine1, &run).await;
        runs.push(run);
        tokio::time::sleep(Duration::from_secs(1)).await; // the runs end one after the other
    }
    drop(a);
    let config = EngineConfig {
        history_max_runs: 2,
        ..EngineConfig::default()
    };
    let engine2 = engine(store.clone(), config);
    assert_eq!(
        engine2.recover().await.unwrap(),
        0,
        "no active run to take over"
    );
    let all = factotum_coordinator::RunQuery {
        limit: 100,
        ..Default::default()
    };
    let listed = engine2.list_runs(all).await.unwrap().runs;
    assert_eq!(listed.len(), 2, "the oldest of three was trimmed at once");
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(!stored(&store, &runs[0]).await);
    assert!(stored(&store, &runs[2]).await);
    let info = engine2.get_run(&runs[2]).await.unwrap();
    assert_eq!(info.tasks.len(), 1000);
    assert!(info.tasks.iter().all(|t| t.state.as_str() == "SUCCEEDED"));
}

#[tokio::test(start_paused = true)]
async fn runs_past_the_newest_kept_whole_are_listed_and_read_back_from_the_store() {
    use factotum_coordinator::RunQuery;
    let store = TestStore::default();
    let config = EngineConfig {
        keep_finished: 2,
        history_max_runs: 10,
        ..EngineConfig::default()
    };
    let engine = engine(store.clone(), config);
    let mut a = FakeAgent::connect(&engine, AgentSpec::named("a")).await;
    let mut runs = vec![];
    for _ in 0..5 {
        runs.push(run_one(&engine, &mut a).await);
        tokio::time::sleep(Duration::from_millis(10)).await; // distinct start times
    }
    // Every run is listed, a page at a time, each once, newest first.
    let mut listed = vec![];
    let mut query = RunQuery {
        limit: 2,
        ..Default::default()
    };
    loop {
        let page = engine.list_runs(query.clone()).await.unwrap();
        listed.extend(page.runs.iter().map(|r| r.run_id.clone()));
        assert!(page
            .runs
            .iter()
            .all(|r| r.tasks.is_empty() && r.task_count == 1));
        match page.next {
            Some(after) => query.after = Some(after),
            None => break,
        }
    }
    let newest_first: Vec<String> = runs.iter().rev().cloned().collect();
    assert_eq!(listed, newest_first);
    // The oldest, kept only as a line of the listing, still shows its tasks: from the store.
    let oldest = engine.get_run(&runs[0]).await.unwrap();
    assert_eq!(oldest.tasks.len(), 1);
    assert_eq!(oldest.tasks[0].state.as_str(), "SUCCEEDED");
    // And a watch of it ends with its end.
    let mut watch = engine.watch(&runs[0]).await.unwrap();
    let mut ended = false;
    while let Some(ev) = watch.recv().await {
        if let factotum_coordinator::WatchEvent::Done(s) = ev {
            ended = s.tasks.len() == 1;
        }
    }
    assert!(ended);
}
