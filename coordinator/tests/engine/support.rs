//! Fake agents, factfiles and stores for the in-process engine tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::DateTime;
use factotum_coordinator::{
    prepare, Clock, Engine, EngineConfig, MemoryStore, RunInfo, RunSpec, Store, StoreError,
    StoreOp, Submission, WatchEvent,
};
use factotum_proto::{
    agent_message, attempt_result, coordinator_message::Msg, AgentMessage, AttemptResult,
    CoordinatorMessage, Heartbeat, Hello, Lease, LeaseRef,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// An engine on a store, reading Tokio's (paused) clock.
pub fn engine<S: Store>(store: S, config: EngineConfig) -> Engine {
    let config = EngineConfig {
        clock: Clock::tokio(DateTime::from_timestamp(1_700_000_000, 0).unwrap()),
        ..config
    };
    Engine::start(config, store, CancellationToken::new())
}

pub fn memory_engine(config: EngineConfig) -> Engine {
    engine(MemoryStore::new(), config)
}

/// A Snowplow-style task; `extra` adds fields of the extended factfile.
pub fn task(name: &str, deps: &[&str], extra: Value) -> Value {
    let mut t = json!({
        "name": name, "executor": "shell", "command": "true", "arguments": [],
        "dependsOn": deps, "onResult": {"terminateJobWithSuccess": [], "continueJob": [0]}
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        t[k] = v.clone();
    }
    t
}

/// A run of these tasks (`job`: extra job fields of the extended factfile).
pub fn spec(tasks: Vec<Value>, job: Value) -> RunSpec {
    let mut data = json!({"name": "engine test", "tasks": tasks});
    for (k, v) in job.as_object().into_iter().flatten() {
        data[k] = v.clone();
    }
    let ff = json!({"schema": "iglu:io.factotum/factfile/jsonschema/1-0-0", "data": data});
    prepare(Submission {
        factfile: ff.to_string(),
        factfile_name: "test.factfile".into(),
        max_output: 1024,
        allow_concurrent: true,
        ..Submission::default()
    })
    .unwrap()
}

/// Long enough for anything the engine does at once; under paused time it costs nothing.
const PATIENCE: Duration = Duration::from_secs(600);

/// An agent scripted by the test, over the in-process session channels.
pub struct FakeAgent {
    pub name: String,
    tx: mpsc::Sender<AgentMessage>,
    rx: mpsc::Receiver<CoordinatorMessage>,
}

pub struct AgentSpec<'a> {
    pub name: &'a str,
    pub slots: u32,
    pub labels: &'a [(&'a str, &'a str)],
    pub running: Vec<LeaseRef>,
}

impl<'a> AgentSpec<'a> {
    pub fn named(name: &'a str) -> AgentSpec<'a> {
        AgentSpec {
            name,
            slots: 0,
            labels: &[],
            running: vec![],
        }
    }
}

impl FakeAgent {
    /// Connects, says `Hello`, and waits for the `Welcome`.
    pub async fn connect(engine: &Engine, spec: AgentSpec<'_>) -> FakeAgent {
        let (tx, from_agent) = mpsc::channel(4096);
        let (to_agent, rx) = mpsc::channel(4096);
        engine.attach_agent(from_agent, to_agent);
        let mut agent = FakeAgent {
            name: spec.name.to_string(),
            tx,
            rx,
        };
        let labels: HashMap<String, String> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        agent
            .say(agent_message::Msg::Hello(Hello {
                agent_id: spec.name.into(),
                hostname: spec.name.into(),
                slots: spec.slots,
                labels,
                running: spec.running,
                ..Hello::default()
            }))
            .await;
        match agent.next().await {
            Some(Msg::Welcome(_)) => agent,
            other => panic!("{}: expected a Welcome, got {other:?}", spec.name),
        }
    }

    pub async fn say(&self, msg: agent_message::Msg) {
        self.tx
            .send(AgentMessage { msg: Some(msg) })
            .await
            .expect("the engine closed the session");
    }

    /// The next message from the engine (`None`: the session ended).
    pub async fn next(&mut self) -> Option<Msg> {
        tokio::time::timeout(PATIENCE, self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{}: nothing from the engine", self.name))
            .and_then(|m| m.msg)
    }

    /// Whether a message arrives within `wait` (of paused time).
    pub async fn quiet_for(&mut self, wait: Duration) -> Option<Msg> {
        match tokio::time::timeout(wait, self.rx.recv()).await {
            Ok(m) => m.and_then(|m| m.msg),
            Err(_) => None,
        }
    }

    /// The next lease (acknowledgements skipped; anything else is a failure).
    pub async fn lease(&mut self) -> Lease {
        loop {
            match self.next().await {
                Some(Msg::Lease(l)) => return l,
                Some(Msg::Ack(_)) => continue,
                other => panic!("{}: expected a lease, got {other:?}", self.name),
            }
        }
    }

    /// Reports an attempt's exit code.
    pub async fn finish(&self, lease: &Lease, code: i32) {
        self.say(agent_message::Msg::AttemptResult(AttemptResult {
            lease: lease.lease.clone(),
            outcome: Some(attempt_result::Outcome::ExitCode(code)),
            ..AttemptResult::default()
        }))
        .await;
    }

    pub async fn heartbeat(&self) {
        self.say(agent_message::Msg::Heartbeat(Heartbeat::default()))
            .await;
    }
}

/// An engine with one agent, `a`, holding the lease of the first task of a run of `tasks`.
pub struct Started {
    pub engine: Engine,
    pub agent: FakeAgent,
    pub run: String,
    pub lease: Lease,
}

pub async fn started(config: EngineConfig, tasks: Vec<Value>, job: Value) -> Started {
    let engine = memory_engine(config);
    let mut agent = FakeAgent::connect(&engine, AgentSpec::named("a")).await;
    let run = engine.submit(spec(tasks, job)).await.unwrap().run_id;
    let lease = agent.lease().await;
    Started {
        engine,
        agent,
        run,
        lease,
    }
}

/// Waits for the run's end; returns its task states by name.
pub async fn finished(engine: &Engine, run: &str) -> RunInfo {
    let mut watch = engine.watch(run).await.unwrap();
    loop {
        match tokio::time::timeout(PATIENCE, watch.recv()).await {
            Ok(Some(WatchEvent::Done(_))) | Ok(None) => break,
            Ok(Some(_)) => continue,
            Err(_) => panic!("run {run} did not end"),
        }
    }
    engine.get_run(run).await.unwrap()
}

pub fn state_of(info: &RunInfo, task: &str) -> String {
    let t = info.tasks.iter().find(|t| &*t.name == task).unwrap();
    t.state.as_str().to_string()
}

/// A store that records every transaction and can be made to fail, or to hang (while a test
/// holds `hold`, every commit waits; `waiting` counts the commits that began).
#[derive(Clone, Default)]
pub struct TestStore {
    inner: MemoryStore,
    pub commits: Arc<Mutex<Vec<Vec<StoreOp>>>>,
    pub down: Arc<AtomicBool>,
    pub fenced: Arc<AtomicBool>,
    pub hold: Arc<tokio::sync::Mutex<()>>,
    pub waiting: Arc<std::sync::atomic::AtomicUsize>,
}

impl TestStore {
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn commits(&self) -> Vec<Vec<StoreOp>> {
        self.commits.lock().unwrap().clone()
    }
}

impl Store for TestStore {
    async fn commit(&self, ops: Vec<StoreOp>) -> Result<(), StoreError> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        drop(self.hold.lock().await);
        if self.fenced.load(Ordering::SeqCst) {
            return Err(StoreError::Fenced);
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("the test took it down".into()));
        }
        self.commits.lock().unwrap().push(ops.clone());
        self.inner.commit(ops).await
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.scan(prefix).await
    }

    async fn scan_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.scan_page(prefix, after, limit).await
    }
}

pub fn key(op: &StoreOp) -> &str {
    op.key()
}
