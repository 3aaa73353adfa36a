//! Webhook delivery: ordered per run and endpoint, parallel across them, nothing given up on
//! silently.
//!
//! Each event is already in the store's outbox when it reaches the deliverer. One worker per
//! (URL, run) POSTs its events in order, signed (`sign`), to the URL or its Iglu form
//! (`endpoint::target`); what the answer means and how long to wait is `policy`. A 2xx deletes
//! the outbox entry; an event refused, retried past its horizon or sent to an endpoint that
//! answered 410 becomes a dead letter (`dead`), kept in the store for `factotum webhooks`.
//! Heartbeats are best effort: one attempt, never stored.

pub mod dead;
pub mod endpoint;
pub mod policy;
pub mod sign;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::Utc;
use factotum_common::format::error_chain;
use factotum_service::Lifecycle;
use rand::Rng;
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;
use crate::store::{Store, StoreOp};
use dead::{DeadLetter, Disabled, Ledger, Why};
use endpoint::{Endpoints, Filter};
use policy::Outcome;

/// The namespace of event ids: UUIDv5 of the URL namespace and
/// `https://github.com/snowplow/factotum`, so anyone can recompute an id.
fn namespace() -> uuid::Uuid {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        b"https://github.com/snowplow/factotum",
    )
}

/// An event's id (`webhook-id`, Snowplow's `eid`): UUIDv5 of `<runReference>-<seq>`, the same on
/// every retry, replay and leader.
pub fn event_id(run_reference: &str, seq: u64) -> String {
    uuid::Uuid::new_v5(&namespace(), format!("{run_reference}-{seq}").as_bytes()).to_string()
}

/// A heartbeat's id: UUIDv5 of `<runReference>-heartbeat-<ttm>`.
pub fn heartbeat_id(run_reference: &str, ttm: i64) -> String {
    uuid::Uuid::new_v5(
        &namespace(),
        format!("{run_reference}-heartbeat-{ttm}").as_bytes(),
    )
    .to_string()
}

/// One event for one URL.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub url: Arc<str>,
    pub run_id: Arc<str>,
    /// Its sequence number in the run (`factotum-sequence`); `None` for a heartbeat.
    pub seq: Option<u64>,
    pub event_id: Arc<str>,
    /// The transition's time, ms since the epoch, strictly increasing within a run (`ttm`).
    pub ttm: i64,
    /// When its retry horizon starts (ms): its transition, or its replay.
    pub retry_from: i64,
    pub body: Arc<str>,
    /// Its outbox entry (empty for a heartbeat, which is never stored).
    pub outbox_key: String,
    /// Why it cannot be sent at all (too large): it is dead-lettered in its turn.
    pub refused: Option<String>,
}

/// How delivery behaves.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub endpoints: Arc<Endpoints>,
    /// Retryable failures are retried until this long after the event's transition.
    pub retry_for: Duration,
    /// Dead letters kept, at most (the oldest go first).
    pub dead_letters: usize,
    pub request_timeout: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            endpoints: Arc::default(),
            retry_for: Duration::from_secs(86_400),
            dead_letters: 10_000,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// What could not be delivered (yet): pending events and dead letters, by URL and run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undelivered {
    pub url: String,
    pub run_id: String,
    pub pending: usize,
    pub dead: usize,
    pub last_error: Option<String>,
}

/// One endpoint as `factotum webhooks list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointReport {
    pub url: String,
    pub disabled: Option<Disabled>,
    pub pending: usize,
    pub dead: usize,
    pub last_error: Option<String>,
    pub filter: Filter,
    pub signed: bool,
}

/// (URL, run): deliveries with the same key go out one at a time, in order.
type QueueKey = (Arc<str>, Arc<str>);

#[derive(Debug, Default)]
struct Queue {
    pending: usize,
    last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    queues: HashMap<QueueKey, Queue>,
    ledger: Ledger,
}

/// A delivery and when it was queued (its lag is measured from there).
type Queued = (Delivery, tokio::time::Instant);

/// Handle to the delivery workers.
#[derive(Clone)]
pub struct Deliverer {
    workers: Arc<Mutex<HashMap<QueueKey, mpsc::UnboundedSender<Queued>>>>,
    shared: Arc<Mutex<Shared>>,
    pending_total: watch::Sender<usize>,
    client: reqwest::Client,
    /// Workers and store writes are tracked here and end with its token.
    life: Lifecycle,
    commit: Arc<dyn Fn(Vec<StoreOp>) + Send + Sync>,
    metrics: Arc<Metrics>,
    config: DeliveryConfig,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer").finish_non_exhaustive()
    }
}

impl Deliverer {
    pub fn new<S: Store>(
        store: S,
        life: Lifecycle,
        metrics: Arc<Metrics>,
        config: DeliveryConfig,
    ) -> Deliverer {
        let spawner = life.clone();
        let commit = Arc::new(move |ops: Vec<StoreOp>| {
            let store = store.clone();
            spawner.spawn(async move {
                if let Err(e) = store.commit(ops).await {
                    tracing::warn!(error = %e, "could not record a webhook delivery in the store (a new leader sends it again)");
                }
            });
        });
        let deliverer = Deliverer {
            workers: Default::default(),
            shared: Arc::new(Mutex::new(Shared {
                queues: HashMap::new(),
                ledger: Ledger::new(config.dead_letters),
            })),
            pending_total: watch::channel(0).0,
            client: reqwest::Client::builder()
                .timeout(config.request_timeout)
                .user_agent(concat!("factotum/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default(),
            life,
            commit,
            metrics,
            config,
        };
        deliverer.count();
        deliverer
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.config.endpoints
    }

    /// Queues an event; events for the same run and URL go out in the order queued.
    pub fn send(&self, d: Delivery) {
        let key = (Arc::clone(&d.url), Arc::clone(&d.run_id));
        lock(&self.shared)
            .queues
            .entry(key.clone())
            .or_default()
            .pending += 1;
        self.pending_total.send_modify(|n| *n += 1);
        self.count();
        let mut workers = lock(&self.workers);
        let tx = workers.entry(key.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            self.life.spawn(self.clone().worker(key, rx));
            tx
        });
        let _ = tx.send((d, tokio::time::Instant::now()));
    }

    /// The run will queue nothing more: its workers end once their queues are empty.
    pub fn close_run(&self, run_id: &str) {
        lock(&self.workers).retain(|(_, run), _| &**run != run_id);
    }

    /// Runs deleted from the store by the history limits: their dead letters are gone too.
    pub fn forget_runs(&self, runs: &[Arc<str>]) {
        lock(&self.shared).ledger.forget_runs(runs);
        self.count();
    }

    /// What a new leader read from the store: dead letters and disabled endpoints (before it
    /// sends the outbox again, so dead letters are not sent).
    pub fn restore(&self, dead: Vec<(String, DeadLetter)>, disabled: Vec<Disabled>) {
        let mut s = lock(&self.shared);
        for (key, d) in dead {
            s.ledger.restore(key, d);
        }
        for d in disabled {
            s.ledger.restore_disabled(d);
        }
        drop(s);
        self.count();
    }

    /// Whether an outbox entry is a dead letter's body (not to be sent).
    pub fn is_dead(&self, outbox_key: &str) -> bool {
        lock(&self.shared).ledger.is_dead(outbox_key)
    }

    /// A run's dead letters from `from` (for `url` when given), in order.
    pub fn dead_of(&self, run: &str, from: u64, url: Option<&str>) -> Vec<(String, DeadLetter)> {
        lock(&self.shared).ledger.of_run(run, from, url)
    }

    /// Sends dead letters again (their bodies read back from the outbox): their records are
    /// deleted first, so a failure makes them dead letters again rather than duplicates.
    pub fn replay(&self, dead_keys: &[String], deliveries: Vec<Delivery>) {
        let ops = lock(&self.shared).ledger.take(dead_keys);
        if !ops.is_empty() {
            (self.commit)(ops);
        }
        self.count();
        for d in deliveries {
            self.send(d);
        }
    }

    /// Enables an endpoint a 410 disabled; false when it was not disabled.
    pub fn enable(&self, url: &str) -> bool {
        let op = lock(&self.shared).ledger.enable(url);
        let enabled = op.is_some();
        if let Some(op) = op {
            (self.commit)(vec![op]);
            tracing::info!(%url, "webhook endpoint enabled again");
        }
        self.count();
        enabled
    }

    /// Every endpoint known (configured, sending, with dead letters or disabled), and the dead
    /// letters, newest first.
    pub fn report(&self) -> (Vec<EndpointReport>, Vec<DeadLetter>) {
        let s = lock(&self.shared);
        let mut by_url: BTreeMap<String, EndpointReport> = BTreeMap::new();
        let endpoints = &self.config.endpoints;
        fn entry<'m>(
            by_url: &'m mut BTreeMap<String, EndpointReport>,
            endpoints: &Endpoints,
            url: &str,
        ) -> &'m mut EndpointReport {
            by_url
                .entry(url.to_string())
                .or_insert_with(|| EndpointReport {
                    url: url.to_string(),
                    disabled: None,
                    pending: 0,
                    dead: 0,
                    last_error: None,
                    filter: endpoints.filter(url),
                    signed: !endpoints.secrets(url).is_empty(),
                })
        }
        for url in endpoints.configured() {
            entry(&mut by_url, endpoints, url);
        }
        for ((url, _), q) in &s.queues {
            let e = entry(&mut by_url, endpoints, url);
            e.pending += q.pending;
            if q.last_error.is_some() {
                e.last_error.clone_from(&q.last_error);
            }
        }
        for d in s.ledger.all() {
            entry(&mut by_url, endpoints, &d.url).dead += 1;
        }
        for d in s.ledger.all_disabled() {
            entry(&mut by_url, endpoints, &d.url).disabled = Some(d.clone());
        }
        let mut dead: Vec<DeadLetter> = s.ledger.all().cloned().collect();
        dead.sort_by(|a, b| b.at.cmp(&a.at).then(a.seq.cmp(&b.seq)));
        (by_url.into_values().collect(), dead)
    }

    /// Waits until everything queued is delivered or given up on, or `timeout` passes;
    /// returns what is left and what was given up on.
    pub async fn flush(&self, timeout: Duration) -> Vec<Undelivered> {
        let mut rx = self.pending_total.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|n| *n == 0)).await;
        let s = lock(&self.shared);
        let mut left: BTreeMap<(String, String), Undelivered> = BTreeMap::new();
        for ((url, run), q) in s.queues.iter().filter(|(_, q)| q.pending > 0) {
            left.insert(
                (url.to_string(), run.to_string()),
                Undelivered {
                    url: url.to_string(),
                    run_id: run.to_string(),
                    pending: q.pending,
                    dead: 0,
                    last_error: q.last_error.clone(),
                },
            );
        }
        for d in s.ledger.all() {
            let u = left
                .entry((d.url.clone(), d.run.clone()))
                .or_insert_with(|| Undelivered {
                    url: d.url.clone(),
                    run_id: d.run.clone(),
                    pending: 0,
                    dead: 0,
                    last_error: None,
                });
            u.dead += 1;
            u.last_error = Some(d.error.clone());
        }
        left.into_values().collect()
    }

    async fn worker(self, key: QueueKey, mut rx: mpsc::UnboundedReceiver<Queued>) {
        while let Some((d, queued)) = rx.recv().await {
            if !self.deliver(&key, &d, queued).await {
                return; // shutting down: the outbox keeps the rest for the next leader
            }
            if let Some(q) = lock(&self.shared).queues.get_mut(&key) {
                q.pending -= 1;
            }
            self.pending_total.send_modify(|n| *n -= 1);
            self.count();
        }
        // The run is closed and its queue delivered: forget it (a long-lived coordinator would
        // otherwise keep one entry per run and URL forever).
        let mut s = lock(&self.shared);
        if s.queues.get(&key).is_some_and(|q| q.pending == 0) {
            s.queues.remove(&key);
        }
    }

    /// Delivers one event or gives up on it; false when shutting down first.
    async fn deliver(&self, key: &QueueKey, d: &Delivery, queued: tokio::time::Instant) -> bool {
        if d.seq.is_none() {
            // A heartbeat: one attempt, never stored, never retried.
            let ok = matches!(self.post(d).await, Outcome::Delivered);
            self.metrics
                .delivered(if ok { "delivered" } else { "heartbeat_failed" });
            return true;
        }
        if let Some(why) = &d.refused {
            self.bury(d, Why::TooLarge, why.clone(), 0);
            return true;
        }
        let mut failures = 0u32;
        loop {
            // (Bound first: a guard in an `if let` would live through `bury`, which locks.)
            let disabled = lock(&self.shared).ledger.disabled(&d.url).cloned();
            if let Some(off) = disabled {
                let error = format!("endpoint disabled since {} ({})", off.since, off.error);
                self.bury(d, Why::Disabled, error, failures);
                return true;
            }
            match self.post(d).await {
                Outcome::Delivered => {
                    self.metrics.delivered("delivered");
                    (self.metrics.webhook_lag).observe(queued.elapsed().as_secs_f64());
                    if failures > 0 {
                        tracing::info!(url = %d.url, run = %d.run_id, failures, "webhook delivered after failing");
                    }
                    (self.commit)(vec![StoreOp::Delete {
                        key: d.outbox_key.clone(),
                    }]);
                    if let Some(q) = lock(&self.shared).queues.get_mut(key) {
                        q.last_error = None;
                    }
                    return true;
                }
                Outcome::Gone(error) => {
                    self.metrics.delivered("refused");
                    self.disable(&d.url, &error);
                    self.bury(d, Why::Disabled, error, failures + 1);
                    return true;
                }
                Outcome::Permanent(error) => {
                    self.metrics.delivered("refused");
                    self.bury(d, Why::Refused, error, failures + 1);
                    return true;
                }
                Outcome::Retry { error, after } => {
                    self.metrics.delivered("failed");
                    failures += 1;
                    // The first failure of an event at WARN, its retries at DEBUG: a dead
                    // endpoint is seen without a line every backoff.
                    if failures == 1 {
                        tracing::warn!(url = %d.url, run = %d.run_id, error = %error, "webhook delivery failed; retrying with backoff");
                    } else {
                        tracing::debug!(url = %d.url, error = %error, failures, "webhook delivery failed again; will retry");
                    }
                    if let Some(q) = lock(&self.shared).queues.get_mut(key) {
                        q.last_error = Some(error.clone());
                    }
                    let pause = policy::wait(failures, after, rand::rng().random());
                    let horizon = self.config.retry_for;
                    if !policy::within_horizon(d.retry_from, horizon, SystemTime::now(), pause) {
                        let error = format!(
                            "{error} (given up after {failures} attempts: --webhook-retry-for {} passed)",
                            factotum_service::duration::show(horizon)
                        );
                        self.bury(d, Why::Expired, error, failures);
                        return true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = self.life.token.cancelled() => return false,
                    }
                }
            }
        }
    }

    /// Gives up on an event: a dead letter in the store (the body stays in the outbox).
    fn bury(&self, d: &Delivery, why: Why, error: String, attempts: u32) {
        tracing::warn!(url = %d.url, run = %d.run_id, seq = d.seq, why = why.as_str(), %error,
            "webhook event dead-lettered (see `factotum webhooks list`; `factotum webhooks replay` sends it again)");
        let letter = DeadLetter {
            url: d.url.to_string(),
            run: d.run_id.to_string(),
            seq: d.seq.unwrap_or(0),
            ttm: d.ttm,
            why,
            error,
            attempts,
            at: Utc::now(),
        };
        let ops = (lock(&self.shared).ledger).add(dead::key_for(&d.outbox_key), letter);
        (self.commit)(ops);
        self.metrics.dead_lettered(why.as_str());
        self.count();
    }

    fn disable(&self, url: &str, error: &str) {
        tracing::warn!(%url, %error, "webhook endpoint disabled: it answered 410 Gone (`factotum webhooks enable` turns it back on)");
        let op = lock(&self.shared).ledger.disable(Disabled {
            url: url.to_string(),
            since: Utc::now(),
            error: error.to_string(),
        });
        (self.commit)(vec![op]);
    }

    /// The gauges: this term's outbox, dead letters and disabled endpoints.
    fn count(&self) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let pending = *self.pending_total.borrow();
        self.metrics.webhook_outbox.set(gauge(pending));
        let s = lock(&self.shared);
        (self.metrics.webhook_dead_letters).set(gauge(s.ledger.count()));
        (self.metrics.webhook_endpoints_disabled).set(gauge(s.ledger.all_disabled().count()));
    }

    async fn post(&self, d: &Delivery) -> Outcome {
        let url = endpoint::target(&d.url, &d.event_id, d.ttm);
        let timestamp = Utc::now().timestamp();
        let mut req = (self.client.post(url))
            .header("Content-Type", "application/json; charset=utf-8")
            .header("webhook-id", &*d.event_id)
            .header("webhook-timestamp", timestamp.to_string());
        if let Some(seq) = d.seq {
            req = req.header("factotum-sequence", seq.to_string());
        }
        let secrets = self.config.endpoints.secrets(&d.url);
        if let Some(sig) = sign::signature(secrets, &d.event_id, timestamp, d.body.as_bytes()) {
            req = req.header("webhook-signature", sig);
        }
        match req.body(d.body.to_string()).send().await {
            Ok(resp) => {
                let retry_after = (resp.headers().get(reqwest::header::RETRY_AFTER))
                    .and_then(|v| v.to_str().ok());
                policy::answer(resp.status().as_u16(), retry_after, SystemTime::now())
            }
            Err(e) => policy::no_answer(error_chain(&e)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_uuid_v5_of_the_run_reference_and_sequence() {
        let a = event_id("2b3d0a8e", 0);
        assert_eq!(a, event_id("2b3d0a8e", 0));
        assert_ne!(a, event_id("2b3d0a8e", 1));
        let u = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(u.get_version_num(), 5);
        // The namespace is itself derived, so anyone can recompute an id.
        assert_eq!(
            namespace().to_string(),
            uuid::Uuid::new_v5(
                &uuid::Uuid::NAMESPACE_URL,
                b"https://github.com/snowplow/factotum"
            )
            .to_string()
        );
    }
}
