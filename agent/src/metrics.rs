//! The agent's Prometheus metrics (`--http-listen`: `GET /metrics`), one set per process:
//! recorded where things happen (sessions in the daemon loop, attempts as they start and
//! end, output as it leaves an attempt), read by a scrape.

use std::sync::{Mutex, OnceLock};

use factotum_common::run::Stream;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    pub stream: &'static str,
}

#[derive(Debug)]
pub struct AgentMetrics {
    registry: Mutex<Registry>,
    /// Attempts running now.
    pub running: Gauge,
    /// `--slots`.
    pub slots: Gauge,
    /// 1 while a session with a coordinator is open.
    pub connected: Gauge,
    pub sessions: Counter,
    pub connect_failures: Counter,
    pub output_bytes: Family<StreamLabel, Counter>,
    pub output_not_streamed: Counter,
}

/// This process's metrics.
pub fn metrics() -> &'static AgentMetrics {
    static METRICS: OnceLock<AgentMetrics> = OnceLock::new();
    METRICS.get_or_init(AgentMetrics::new)
}

impl AgentMetrics {
    fn new() -> AgentMetrics {
        let m = AgentMetrics {
            registry: Mutex::new(Registry::with_prefix("factotum_agent")),
            running: Gauge::default(),
            slots: Gauge::default(),
            connected: Gauge::default(),
            sessions: Counter::default(),
            connect_failures: Counter::default(),
            output_bytes: Family::default(),
            output_not_streamed: Counter::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|p| p.into_inner());
            r.register(
                "attempts_running",
                "Task attempts running now",
                m.running.clone(),
            );
            r.register(
                "slots",
                "Attempts this agent runs at once (--slots)",
                m.slots.clone(),
            );
            r.register(
                "connected",
                "1 while a session with a coordinator is open",
                m.connected.clone(),
            );
            r.register(
                "sessions",
                "Sessions opened with a coordinator (the first, then each reconnect)",
                m.sessions.clone(),
            );
            r.register(
                "connect_failures",
                "Attempts to open a session that failed",
                m.connect_failures.clone(),
            );
            r.register(
                "output_bytes",
                "Bytes of output the tasks wrote, by stream",
                m.output_bytes.clone(),
            );
            r.register("output_not_streamed_bytes", "Bytes of output left out of the stream to the coordinator (--max-stream-rate, or a coordinator not keeping up)", m.output_not_streamed.clone());
        }
        m
    }

    pub fn output(&self, stream: Stream, bytes: usize) {
        let stream = match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        (self.output_bytes.get_or_create(&StreamLabel { stream })).inc_by(bytes as u64);
    }

    pub fn set_running(&self, n: usize) {
        self.running.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition (OpenMetrics text).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }
}
