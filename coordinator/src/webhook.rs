//! Webhook delivery: ordered per run and URL, any 2xx is success, exponential backoff with
//! jitter, nothing dropped silently.
//!
//! Each payload is already in the store's outbox when it reaches the deliverer; a 2xx deletes
//! it there. What is still pending when the caller gives up is reported, by URL and run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use factotum_common::format::error_chain;
use factotum_service::Lifecycle;
use rand::Rng;
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;
use crate::store::{Store, StoreOp};

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One payload for one URL.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub url: Arc<str>,
    pub run_id: Arc<str>,
    /// Stable across retries (the `webhook-id` header) so receivers can deduplicate.
    pub event_id: String,
    pub body: Arc<str>,
    /// The outbox entry to delete once delivered.
    pub outbox_key: String,
}

/// What could not be delivered (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undelivered {
    pub url: String,
    pub run_id: String,
    pub pending: usize,
    pub last_error: Option<String>,
}

/// (URL, run): deliveries with the same key go out one at a time, in order.
type QueueKey = (Arc<str>, Arc<str>);

#[derive(Debug, Default)]
struct Queue {
    pending: usize,
    last_error: Option<String>,
}

/// A delivery and when it was queued (its lag is measured from there).
type Queued = (Delivery, tokio::time::Instant);

/// Handle to the delivery workers.
#[derive(Clone)]
pub struct Deliverer {
    workers: Arc<Mutex<HashMap<QueueKey, mpsc::UnboundedSender<Queued>>>>,
    queues: Arc<Mutex<HashMap<QueueKey, Queue>>>,
    pending_total: watch::Sender<usize>,
    client: reqwest::Client,
    /// Workers and outbox deletes are tracked here and end with its token.
    life: Lifecycle,
    delete: Arc<dyn Fn(String) + Send + Sync>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer").finish_non_exhaustive()
    }
}

impl Deliverer {
    pub fn new<S: Store>(store: S, life: Lifecycle, metrics: Arc<Metrics>) -> Deliverer {
        let spawner = life.clone();
        let delete = Arc::new(move |key: String| {
            let store = store.clone();
            spawner.spawn(async move {
                if let Err(e) = store.commit(vec![StoreOp::Delete { key }]).await {
                    tracing::warn!(error = %e, "could not clear a delivered webhook from the outbox");
                }
            });
        });
        let deliverer = Deliverer {
            workers: Default::default(),
            queues: Default::default(),
            pending_total: watch::channel(0).0,
            client: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .user_agent(concat!("factotum/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default(),
            life,
            delete,
            metrics,
        };
        deliverer.count_outbox();
        deliverer
    }

    /// Queues a payload; deliveries for the same run and URL go out in the order queued.
    pub fn send(&self, d: Delivery) {
        let key = (Arc::clone(&d.url), Arc::clone(&d.run_id));
        lock(&self.queues).entry(key.clone()).or_default().pending += 1;
        self.pending_total.send_modify(|n| *n += 1);
        self.count_outbox();
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

    /// Waits until everything queued is delivered or `timeout` passes; returns what is left.
    pub async fn flush(&self, timeout: Duration) -> Vec<Undelivered> {
        let mut rx = self.pending_total.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|n| *n == 0)).await;
        let mut left: Vec<Undelivered> = lock(&self.queues)
            .iter()
            .filter(|(_, q)| q.pending > 0)
            .map(|((url, run), q)| Undelivered {
                url: url.to_string(),
                run_id: run.to_string(),
                pending: q.pending,
                last_error: q.last_error.clone(),
            })
            .collect();
        left.sort_by(|a, b| (&a.url, &a.run_id).cmp(&(&b.url, &b.run_id)));
        left
    }

    async fn worker(self, key: QueueKey, mut rx: mpsc::UnboundedReceiver<Queued>) {
        while let Some((d, queued)) = rx.recv().await {
            let mut backoff = FIRST_BACKOFF;
            let mut failures = 0u32;
            loop {
                let posted = self.post(&d).await;
                self.metrics.delivered(posted.is_ok());
                match posted {
                    Ok(()) => {
                        self.metrics
                            .webhook_lag
                            .observe(queued.elapsed().as_secs_f64());
                        if failures > 0 {
                            tracing::info!(url = %d.url, run = %d.run_id, failures, "webhook delivered after failing");
                        }
                        (self.delete)(d.outbox_key.clone());
                        if let Some(q) = lock(&self.queues).get_mut(&key) {
                            q.pending -= 1;
                            q.last_error = None;
                        }
                        self.pending_total.send_modify(|n| *n -= 1);
                        self.count_outbox();
                        break;
                    }
                    Err(e) => {
                        // The first failure of a payload at WARN, its retries at DEBUG: a dead
                        // endpoint is seen without a line every backoff.
                        failures += 1;
                        if failures == 1 {
                            tracing::warn!(url = %d.url, run = %d.run_id, error = %e, "webhook delivery failed; retrying with backoff");
                        } else {
                            tracing::debug!(url = %d.url, error = %e, failures, "webhook delivery failed again; will retry");
                        }
                        if let Some(q) = lock(&self.queues).get_mut(&key) {
                            q.last_error = Some(e);
                        }
                        // Full jitter: sleep a random time up to the current backoff.
                        let ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX);
                        let pause = Duration::from_millis(rand::rng().random_range(ms / 2..=ms));
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = self.life.token.cancelled() => return,
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
        // The run is closed and its queue delivered: forget it (a long-lived coordinator would
        // otherwise keep one entry per run and URL forever).
        let mut queues = lock(&self.queues);
        if queues.get(&key).is_some_and(|q| q.pending == 0) {
            queues.remove(&key);
        }
    }

    /// The outbox gauge: this term's deliverer's count (a new term's starts from what it
    /// recovers from the store).
    fn count_outbox(&self) {
        let pending = *self.pending_total.borrow();
        (self.metrics.webhook_outbox).set(i64::try_from(pending).unwrap_or(i64::MAX));
    }

    async fn post(&self, d: &Delivery) -> Result<(), String> {
        let resp = self
            .client
            .post(&*d.url)
            .header("Content-Type", "application/json; charset=utf-8")
            .header("webhook-id", &d.event_id)
            .body(d.body.to_string())
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", resp.status()))
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
