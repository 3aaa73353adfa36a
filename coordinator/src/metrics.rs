//! The coordinator's Prometheus metrics (`GET /metrics` on the HTTP port).
//!
//! One [`Metrics`] lives as long as the process (engines come and go with leadership terms):
//! counters and histograms are recorded where things happen (the engine's interpreter, the
//! webhook deliverer, the store writes), and gauges that describe the engine's state (active
//! runs, ready tasks, agents) are sampled by the engine once a second ([`Sample`]), so a scrape
//! never waits on the engine and recording costs a few atomic operations.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use factotum_common::run::{JobState, RunState, TaskState, Update, UpdateKind};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// Every metric the coordinator exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    pub run_transitions: Family<StateLabel, Counter>,
    pub task_transitions: Family<StateLabel, Counter>,
    pub task_duration: Histogram,
    pub task_start_latency: Histogram,
    pub webhook_deliveries: Family<ResultLabel, Counter>,
    pub webhook_lag: Histogram,
    pub webhook_outbox: Gauge,
    pub webhook_dead_lettered: Family<ResultLabel, Counter>,
    pub webhook_dead_letters: Gauge,
    pub webhook_endpoints_disabled: Gauge,
    pub store_latency: Histogram,
    pub store_errors: Counter,
    pub commit_batch_ops: Histogram,
    pub agents_lost: Counter,
    pub leader: Gauge,
    pub epoch: Gauge,
    // Sampled from the engine.
    runs_active: Gauge,
    tasks: Family<StateLabel, Gauge>,
    oldest_ready: Gauge<f64, AtomicU64>,
    leases: Gauge,
    agents: Family<StateLabel, Gauge>,
    slots_free: Gauge,
    stalled: Gauge,
}

/// The engine's state at one moment, for the gauges.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Sample {
    pub runs_active: usize,
    pub tasks_ready: usize,
    pub tasks_running: usize,
    /// How long the task that has been ready longest (and not started) has waited.
    pub oldest_ready: Option<Duration>,
    pub leases: usize,
    pub agents_connected: usize,
    pub agents_draining: usize,
    pub agents_disconnected: usize,
    pub slots_free: u64,
    pub stalled_batches: usize,
}

/// Buckets from 1 ms to ~9 h (seconds, ×2 each).
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 25))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("factotum")),
            run_transitions: Family::default(),
            task_transitions: Family::default(),
            task_duration: seconds(),
            task_start_latency: seconds(),
            webhook_deliveries: Family::default(),
            webhook_lag: seconds(),
            webhook_outbox: Gauge::default(),
            webhook_dead_lettered: Family::default(),
            webhook_dead_letters: Gauge::default(),
            webhook_endpoints_disabled: Gauge::default(),
            store_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            store_errors: Counter::default(),
            commit_batch_ops: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            agents_lost: Counter::default(),
            leader: Gauge::default(),
            epoch: Gauge::default(),
            runs_active: Gauge::default(),
            tasks: Family::default(),
            oldest_ready: Gauge::default(),
            leases: Gauge::default(),
            agents: Family::default(),
            slots_free: Gauge::default(),
            stalled: Gauge::default(),
        };
        m.register();
        m
    }

    fn register(&self) {
        let mut r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        macro_rules! add {
            ($name:expr, $help:expr, $metric:expr) => {
                r.register($name, $help, $metric.clone())
            };
        }
        add!(
            "run_transitions",
            "Runs entering each state (waiting, running, succeeded, failed, cancelled)",
            self.run_transitions
        );
        add!("task_transitions", "Task attempts entering each state (running, succeeded, succeeded_no_op, failed, skipped, waiting for a retry)", self.task_transitions);
        add!(
            "task_duration_seconds",
            "How long finished task attempts ran",
            self.task_duration
        );
        add!(
            "task_start_latency_seconds",
            "From a task being ready to its lease being recorded",
            self.task_start_latency
        );
        add!(
            "webhook_deliveries",
            "Webhook POSTs by result (delivered: a 2xx; failed: retried later; refused: a 4xx that \
             dead-letters the event or a 410 that disables the endpoint; heartbeat_failed: a \
             best-effort heartbeat not delivered)",
            self.webhook_deliveries
        );
        add!(
            "webhook_delivery_lag_seconds",
            "From a webhook being queued to its delivery",
            self.webhook_lag
        );
        add!(
            "webhook_outbox",
            "Webhook deliveries queued and not yet delivered",
            self.webhook_outbox
        );
        add!(
            "webhook_dead_lettered",
            "Webhook events given up on and kept as dead letters, by why (refused: a 4xx; \
             expired: retried past --webhook-retry-for; disabled: the endpoint answered 410; \
             too_large: over 1 MiB with empty output tails)",
            self.webhook_dead_lettered
        );
        add!(
            "webhook_dead_letters",
            "Dead letters held in the store (at most --webhook-dead-letters)",
            self.webhook_dead_letters
        );
        add!(
            "webhook_endpoints_disabled",
            "Webhook endpoints disabled by a 410 until `factotum webhooks enable`",
            self.webhook_endpoints_disabled
        );
        add!(
            "store_transaction_seconds",
            "Store (etcd) transactions the engine waited for",
            self.store_latency
        );
        add!(
            "store_errors",
            "Store transactions that failed",
            self.store_errors
        );
        add!(
            "commit_batch_ops",
            "Store operations written per engine turn (group commit)",
            self.commit_batch_ops
        );
        add!(
            "agents_lost",
            "Agents declared lost (silent past --lost-after with attempts)",
            self.agents_lost
        );
        add!(
            "leader",
            "1 while this coordinator leads, else 0",
            self.leader
        );
        add!(
            "leader_epoch",
            "The leadership term this coordinator last led (its fencing epoch)",
            self.epoch
        );
        add!("runs_active", "Runs not yet finished", self.runs_active);
        add!(
            "tasks",
            "Tasks of active runs that are ready (waiting for an agent) or running",
            self.tasks
        );
        add!(
            "oldest_ready_task_age_seconds",
            "How long the task ready longest has waited to start (0: none waits)",
            self.oldest_ready
        );
        add!(
            "leases_in_flight",
            "Task attempts leased to agents and not yet finished",
            self.leases
        );
        add!(
            "agents",
            "Known agents by state (connected, draining, disconnected)",
            self.agents
        );
        add!(
            "agent_slots_free",
            "Free slots on connected agents that are not draining",
            self.slots_free
        );
        add!(
            "stalled_batches",
            "Engine turns waiting for the store to come back",
            self.stalled
        );
    }

    /// Sets the sampled gauges.
    pub fn sample(&self, s: &Sample) {
        let set = |g: &Gauge, v: usize| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(&self.runs_active, s.runs_active);
        set(
            &self.tasks.get_or_create(&StateLabel { state: "ready" }),
            s.tasks_ready,
        );
        set(
            &self.tasks.get_or_create(&StateLabel { state: "running" }),
            s.tasks_running,
        );
        self.oldest_ready
            .set(s.oldest_ready.map_or(0.0, |d| d.as_secs_f64()));
        set(&self.leases, s.leases);
        for (state, n) in [
            ("connected", s.agents_connected),
            ("draining", s.agents_draining),
            ("disconnected", s.agents_disconnected),
        ] {
            set(&self.agents.get_or_create(&StateLabel { state }), n);
        }
        self.slots_free
            .set(i64::try_from(s.slots_free).unwrap_or(i64::MAX));
        set(&self.stalled, s.stalled_batches);
    }

    /// Engine turns waiting for the store, as last sampled.
    pub fn stalled_now(&self) -> i64 {
        self.stalled.get()
    }

    /// A follower holds no runs: its engine gauges read 0.
    pub fn clear_sample(&self) {
        self.sample(&Sample::default());
    }

    pub fn run_entered(&self, state: &'static str) {
        self.run_transitions
            .get_or_create(&StateLabel { state })
            .inc();
    }

    pub fn task_entered(&self, state: &'static str) {
        self.task_transitions
            .get_or_create(&StateLabel { state })
            .inc();
    }

    /// Counts a run's transitions (a cancelled run's end as `cancelled`, though its webhooks
    /// say FAILED) and times the task attempts that ended.
    pub fn observe(&self, run: &RunState, update: &Update) {
        match &update.kind {
            UpdateKind::Job { current, .. } => self.run_entered(match current {
                JobState::Waiting => "waiting",
                JobState::Running => "running",
                JobState::Succeeded => "succeeded",
                JobState::Failed if run.cancelled().is_some() => "cancelled",
                JobState::Failed => "failed",
            }),
            UpdateKind::Tasks(transitions) => {
                for tr in transitions {
                    self.task_entered(match tr.current {
                        TaskState::Waiting => "waiting",
                        TaskState::Running => "running",
                        TaskState::Succeeded => "succeeded",
                        TaskState::SucceededNoOp => "succeeded_no_op",
                        TaskState::Failed => "failed",
                        TaskState::Skipped => "skipped",
                    });
                    let ran = run.task(tr.task).and_then(|r| r.duration);
                    if let (TaskState::Running, Some(d)) = (tr.previous, ran) {
                        self.task_duration.observe(d.as_secs_f64());
                    }
                }
            }
        }
    }

    /// One POST's result: `delivered`, `failed`, `refused` or `heartbeat_failed`.
    pub fn delivered(&self, result: &'static str) {
        self.webhook_deliveries
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// An event given up on: `refused`, `expired`, `disabled` or `too_large`.
    pub fn dead_lettered(&self, why: &'static str) {
        (self.webhook_dead_lettered)
            .get_or_create(&ResultLabel { result: why })
            .inc();
    }

    /// The Prometheus text exposition (OpenMetrics text, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_with_its_help_and_samples_set_the_gauges() {
        let m = Metrics::new();
        m.run_entered("succeeded");
        m.task_entered("running");
        m.task_start_latency.observe(0.25);
        m.sample(&Sample {
            runs_active: 2,
            tasks_ready: 3,
            oldest_ready: Some(Duration::from_millis(1500)),
            agents_connected: 1,
            slots_free: 4,
            ..Sample::default()
        });
        let text = m.encode();
        for line in [
            "factotum_run_transitions_total{state=\"succeeded\"} 1",
            "factotum_task_transitions_total{state=\"running\"} 1",
            "factotum_runs_active 2",
            "factotum_tasks{state=\"ready\"} 3",
            "factotum_oldest_ready_task_age_seconds 1.5",
            "factotum_agents{state=\"connected\"} 1",
            "factotum_agent_slots_free 4",
            "factotum_task_start_latency_seconds_count 1",
            "# HELP factotum_leader 1 while this coordinator leads, else 0.",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
