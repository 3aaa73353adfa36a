//! Who speaks for an attempt: only the agent holding it, on its current session; one live
//! session per agent name; and attempts a failover left leased but never sent.

use std::time::Duration;

use factotum_coordinator::{Engine, EngineConfig};
use factotum_proto::coordinator_message::Msg;
use factotum_proto::{
    agent_message, attempt_result, AgentMessage, AttemptResult, CoordinatorMessage, Hello, Lease,
    LeaseRef,
};
use serde_json::json;
use tokio::sync::mpsc;

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
