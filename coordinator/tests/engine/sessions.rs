//! Who speaks for an attempt: only the agent holding it, on its current session; one live
//! session per agent name; and attempts a failover left leased but never sent.

use std::time::Duration;

use chrono::DateTime;
use factotum_coordinator::{Clock, Engine, EngineConfig, MemoryStore};
use factotum_proto::coordinator_message::Msg;
use factotum_proto::{
    agent_message, attempt_result, AgentMessage, AttemptResult, CoordinatorMessage, Hello, Lease,
    LeaseRef,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::support::*;

#[tokio::test(start_paused = true)]
async fn a_result_from_an_agent_that_does_not_hold_the_attempt_is_ignored_and_not_acknowledged() {
    let tasks = vec![
        task("first", &[], json!({})),
        task("second", &["first"], json!({})),
    ];
    let Started {
        engine,
        agent: mut a,
        run,
        lease,
    } = started(EngineConfig::default(), tasks, json!({})).await;
    let mut watch = engine.watch(&run).await.unwrap();
    // Agent b forges the end of a's attempt.
    let mut b = FakeAgent::connect(&engine, AgentSpec::named("b")).await;
    b.finish(&lease, 0).await;
    b.say(agent_message::Msg::Output(factotum_proto::Output {
        lease: lease.lease.clone(),
        stream: factotum_proto::Stream::Stdout as i32,
        line: "forged".into(),
        continued: false,
    }))
    .await;
    assert!(
        b.quiet_for(Duration::from_secs(5)).await.is_none(),
        "no ack for a result b does not hold, and no lease of the dependent task"
    );
    assert!(a.quiet_for(Duration::from_secs(1)).await.is_none());
    let info = engine.get_run(&run).await.unwrap();
    assert_eq!(state_of(&info, "first"), "RUNNING");
    assert_eq!(state_of(&info, "second"), "WAITING");
    // A result of a run this coordinator does not know is still acknowledged (forgotten).
    let unknown = LeaseRef {
        run_id: "no-such-run".into(),
        task: 0,
        attempt: 1,
        epoch: 0,
    };
    b.say(agent_message::Msg::AttemptResult(AttemptResult {
        lease: Some(unknown.clone()),
        outcome: Some(attempt_result::Outcome::ExitCode(0)),
        ..AttemptResult::default()
    }))
    .await;
    match b.next().await {
        Some(Msg::Ack(ack)) => assert_eq!(ack.lease, Some(unknown)),
        other => panic!("expected the ack of an unknown run's result, got {other:?}"),
    }
    // The holder's own result counts.
    a.finish(&lease, 0).await;
    let (second, holder) = tokio::select! {
        l = a.lease() => (l, "a"),
        l = b.lease() => (l, "b"),
    };
    assert_eq!(second.task_name, "second", "leased to {holder}");
    match holder {
        "a" => a.finish(&second, 0).await,
        _ => b.finish(&second, 0).await,
    }
    let info = finished(&engine, &run).await;
    assert_eq!(info.state.as_str(), "SUCCEEDED");
    while let Some(ev) = watch.recv().await {
        assert!(
            !matches!(ev, factotum_coordinator::WatchEvent::Output { .. }),
            "b's output was not taken: {ev:?}"
        );
    }
}

/// A session opened by the test with a `Hello` of its own making.
struct Session {
    tx: mpsc::Sender<AgentMessage>,
    rx: mpsc::Receiver<CoordinatorMessage>,
}

fn hello(name: &str, host: &str, instance: &str, state: &str) -> Hello {
    Hello {
        agent_id: name.into(),
        hostname: host.into(),
        instance_id: instance.into(),
        state_id: state.into(),
        ..Hello::default()
    }
}

impl Session {
    /// Opens a session with `hello`; returns it and the engine's first answer.
    async fn open(engine: &Engine, hello: Hello) -> (Session, Option<Msg>) {
        let (tx, from_agent) = mpsc::channel(64);
        let (to_agent, rx) = mpsc::channel(64);
        engine.attach_agent(from_agent, to_agent);
        let mut s = Session { tx, rx };
        s.say(agent_message::Msg::Hello(hello)).await;
        let first = s.next().await;
        (s, first)
    }

    async fn say(&self, msg: agent_message::Msg) {
        let _ = self.tx.send(AgentMessage { msg: Some(msg) }).await;
    }

    /// The next message (`None`: the session ended).
    async fn next(&mut self) -> Option<Msg> {
        tokio::time::timeout(Duration::from_secs(600), self.rx.recv())
            .await
            .expect("nothing from the engine")
            .and_then(|m| m.msg)
    }

    async fn lease(&mut self) -> Lease {
        loop {
            match self.next().await {
                Some(Msg::Lease(l)) => return l,
                Some(Msg::Ack(_)) => continue,
                other => panic!("expected a lease, got {other:?}"),
            }
        }
    }

    async fn finish(&self, lease: &Lease, code: i32) {
        self.say(agent_message::Msg::AttemptResult(AttemptResult {
            lease: lease.lease.clone(),
            outcome: Some(attempt_result::Outcome::ExitCode(code)),
            ..AttemptResult::default()
        }))
        .await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_second_agent_of_the_same_name_is_refused_and_the_first_keeps_running_its_task() {
    let engine = memory_engine(EngineConfig::default());
    let (mut first, welcome) = Session::open(&engine, hello("a", "h1", "one", "")).await;
    assert!(matches!(welcome, Some(Msg::Welcome(_))), "{welcome:?}");
    let run = engine
        .submit(spec(vec![task("t", &[], json!({}))], json!({})))
        .await
        .unwrap()
        .run_id;
    let lease = first.lease().await;
    // A clone: the same name from another process, without the first one's state.
    let (mut clone, answer) = Session::open(&engine, hello("a", "h2", "two", "")).await;
    match answer {
        Some(Msg::Refused(r)) => assert_eq!(
            r.reason,
            "agent name 'a' is already connected from host h1 (this session: host h2)"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(clone.next().await.is_none(), "the refused session ends");
    // The clone's results are not taken either (it holds nothing).
    clone.finish(&lease, 1).await;
    // The first session is untouched: its task goes on and its result counts.
    assert!(
        tokio::time::timeout(Duration::from_secs(5), first.next())
            .await
            .is_err(),
        "nothing for the first session (no cancel, no end)"
    );
    let info = engine.get_run(&run).await.unwrap();
    assert_eq!(state_of(&info, "t"), "RUNNING");
    let agents = engine.list_agents().await.unwrap();
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert_eq!(agents[0].hostname, "h1");
    first.finish(&lease, 0).await;
    let info = finished(&engine, &run).await;
    assert_eq!(info.state.as_str(), "SUCCEEDED");
}

#[tokio::test(start_paused = true)]
async fn the_same_process_or_the_same_state_takes_its_session_over() {
    for (instance, state) in [("one", ""), ("two", "kept")] {
        let engine = memory_engine(EngineConfig::default());
        let (mut old, _) = Session::open(&engine, hello("a", "h1", "one", "kept")).await;
        let run = engine
            .submit(spec(vec![task("t", &[], json!({}))], json!({})))
            .await
            .unwrap()
            .run_id;
        let lease = old.lease().await;
        let mut again = hello("a", "h1", instance, state);
        again.running = vec![lease.lease.clone().unwrap()];
        let (new, welcome) = Session::open(&engine, again).await;
        assert!(
            matches!(welcome, Some(Msg::Welcome(_))),
            "{instance}/{state}: {welcome:?}"
        );
        assert!(old.next().await.is_none(), "the old session is closed");
        new.finish(&lease, 0).await;
        let info = finished(&engine, &run).await;
        assert_eq!(info.state.as_str(), "SUCCEEDED", "{instance}/{state}");
    }
}

/// An engine on `store` that the test can stop (a deposed leader).
fn leader(store: MemoryStore, stop: &CancellationToken) -> Engine {
    let config = EngineConfig {
        clock: Clock::tokio(DateTime::from_timestamp(1_700_000_000, 0).unwrap()),
        ..EngineConfig::default()
    };
    Engine::start(config, store, stop.clone())
}

/// The old leader recorded the lease of a run's only task for agent `a` (process `one`, with
/// state directory `state`), and `a` never got it; a new leader took over. Returns the new
/// leader, the run and the lease.
async fn leased_but_never_sent(state: &str) -> (Engine, String, Lease) {
    let store = MemoryStore::new();
    let old_stop = CancellationToken::new();
    let old = leader(store.clone(), &old_stop);
    let (mut a, _) = Session::open(&old, hello("a", "h1", "one", state)).await;
    let run = old
        .submit(spec(vec![task("t", &[], json!({}))], json!({})))
        .await
        .unwrap()
        .run_id;
    let lease = a.lease().await; // recorded; to the engine, as good as sent and lost
    old_stop.cancel(); // the old leader stops before anything else happens
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(a);
    let new = leader(store, &CancellationToken::new());
    assert_eq!(new.recover().await.unwrap(), 1);
    (new, run, lease)
}

#[tokio::test(start_paused = true)]
async fn after_a_failover_the_same_agent_process_without_its_attempt_is_leased_it_again() {
    // The same process; or a new one with the same state directory (no record of it there).
    for (instance, state) in [("one", ""), ("two", "kept")] {
        the_same_agent_is_leased_it_again(instance, state).await;
    }
}

async fn the_same_agent_is_leased_it_again(instance: &str, state: &str) {
    let (engine, run, lease) = leased_but_never_sent(state).await;
    let (mut a, welcome) = Session::open(&engine, hello("a", "h1", instance, state)).await;
    assert!(matches!(welcome, Some(Msg::Welcome(_))), "{welcome:?}");
    let again = a.lease().await;
    let (was, now) = (lease.lease.clone().unwrap(), again.lease.clone().unwrap());
    assert_eq!(
        (&now.run_id, now.task, now.attempt),
        (&was.run_id, was.task, was.attempt),
        "the same attempt"
    );
    assert_eq!(again.task_name, "t");
    // Well past the failover grace: nothing fails it.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let info = engine.get_run(&run).await.unwrap();
    assert_eq!(state_of(&info, "t"), "RUNNING");
    a.finish(&again, 0).await;
    let info = finished(&engine, &run).await;
    assert_eq!(info.state.as_str(), "SUCCEEDED");
    let t = info.tasks.iter().find(|t| &*t.name == "t").unwrap();
    assert_eq!(t.attempt, 1, "no second attempt");
}

#[tokio::test(start_paused = true)]
async fn after_a_failover_the_agent_restarted_without_its_state_fails_the_attempt_as_before() {
    let (engine, run, _) = leased_but_never_sent("").await;
    // A new process of agent a, without a state directory: it cannot tell "never received"
    // from "ran and died with me".
    let (mut a, welcome) = Session::open(&engine, hello("a", "h1", "two", "")).await;
    assert!(matches!(welcome, Some(Msg::Welcome(_))), "{welcome:?}");
    let info = finished(&engine, &run).await;
    assert_eq!(info.state.as_str(), "FAILED");
    let t = info.tasks.iter().find(|t| &*t.name == "t").unwrap();
    assert_eq!(
        t.error_message.as_deref(),
        Some("agent a restarted without the task")
    );
    assert!(
        matches!(
            tokio::time::timeout(Duration::from_secs(5), a.next()).await,
            Err(_) | Ok(Some(Msg::Ack(_)))
        ),
        "no lease for it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reconnecting_agent_process_is_leased_again_what_it_never_received() {
    let engine = memory_engine(EngineConfig::default());
    let (mut a, _) = Session::open(&engine, hello("a", "h1", "one", "")).await;
    let run = engine
        .submit(spec(vec![task("t", &[], json!({}))], json!({})))
        .await
        .unwrap()
        .run_id;
    let lease = a.lease().await; // lost with the session
    let (mut a, _) = Session::open(&engine, hello("a", "h1", "one", "")).await;
    let again = a.lease().await;
    assert_eq!(again.lease, lease.lease, "the same attempt, the same epoch");
    a.finish(&again, 0).await;
    let info = finished(&engine, &run).await;
    assert_eq!(info.state.as_str(), "SUCCEEDED");
}
