//! The etcd store: the same key layout as the memory store under a prefix, every batch one etcd
//! transaction, fenced on the leader key when the coordinator holds leadership.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Txn, TxnOp,
};

pub use self::errors::describe;
use self::errors::{etcd_unavailable, unavailable};
use self::writes::{counter_read, Patience, Writes, REQUEST_TIMEOUT};
use crate::fence::Fence;
use crate::store::{last_write_per_key, Store, StoreError, StoreOp, MAX_OPS_PER_COMMIT};

mod errors;
mod writes;

/// How to reach etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Every key lives under this prefix (default `/factotum`).
    pub prefix: String,
    pub user: Option<(String, String)>,
    /// PEM files: the CA to trust, and a client certificate and key for mutual TLS.
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    election_client: Client,
    prefix: String,
    /// Set on a leader's copy of the store: every write is conditional on it.
    fence: Option<Arc<Fence>>,
    /// A leader's writes in order (with the fence); held while one is in flight.
    writes: Option<Arc<tokio::sync::Mutex<Writes>>>,
    /// Ends the endpoint tracking when the last copy of the store goes.
    _tracking: Option<Arc<tokio_util::sync::DropGuard>>,
    patience: Arc<Patience>,
}

/// How long a member has to answer a probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often every endpoint is probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Whether the member at `endpoint` serves a (linearizable) read now.
async fn answers(endpoint: &str, probe: &ConnectOptions) -> bool {
    let attempt = async {
        let mut c = Client::connect([endpoint], Some(probe.clone()))
            .await
            .ok()?;
        c.get("factotum-probe", None).await.ok()
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT * 2, attempt).await,
        Ok(Some(_))
    )
}

async fn live_endpoints(endpoints: &[String], probe: &ConnectOptions) -> Vec<String> {
    let mut checks = tokio::task::JoinSet::new();
    for (i, e) in endpoints.iter().enumerate() {
        let (e, probe) = (e.clone(), probe.clone());
        checks.spawn(async move { (i, answers(&e, &probe).await) });
    }
    let mut up = vec![false; endpoints.len()];
    while let Some(Ok((i, ok))) = checks.join_next().await {
        up[i] = ok;
    }
    endpoints
        .iter()
        .zip(up)
        .filter(|(_, up)| *up)
        .map(|(e, _)| e.clone())
        .collect()
}

/// Keeps the balanced clients on the members that answer: a member that stops answering is
/// taken out (its requests would fail), and put back when it answers again. The set never
/// becomes empty: with no member answering, every endpoint is kept.
async fn track_endpoints(
    all: Vec<String>,
    mut used: Vec<String>,
    probe: ConnectOptions,
    clients: [Client; 2],
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PROBE_EVERY) => {}
            _ = stop.cancelled() => return,
        }
        let mut live = live_endpoints(&all, &probe).await;
        if live.is_empty() {
            live = all.clone();
        }
        for e in all.iter() {
            let (was, is) = (used.contains(e), live.contains(e));
            if was && !is {
                tracing::warn!(endpoint = %e, "etcd member not answering: requests go to the others");
                for c in &clients {
                    let _ = c.remove_endpoint(e).await;
                }
            } else if is && !was {
                tracing::info!(endpoint = %e, "etcd member answers: requests go to it again");
                for c in &clients {
                    let _ = c.add_endpoint(e).await;
                }
            }
        }
        used = live;
    }
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    pub async fn connect(cfg: &EtcdConfig) -> Result<EtcdStore, StoreError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(REQUEST_TIMEOUT)
            // A member without a leader says so at once instead of holding the request.
            .with_require_leader(true)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        if let Some((user, password)) = &cfg.user {
            opts = opts.with_user(user, password);
        }
        if cfg.ca.is_some() || cfg.cert.is_some() {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &cfg.ca {
                let pem = std::fs::read(ca)
                    .map_err(|e| unavailable(format!("cannot read {}: {e}", ca.display())))?;
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
            }
            if let Some((cert, key)) = &cfg.cert {
                let read = |p: &std::path::Path| {
                    std::fs::read(p)
                        .map_err(|e| unavailable(format!("cannot read {}: {e}", p.display())))
                };
                tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
            }
            opts = opts.with_tls(tls);
        }
        // A probe answers quickly or counts the member as down.
        let probe = opts
            .clone()
            .with_connect_timeout(PROBE_TIMEOUT)
            .with_timeout(PROBE_TIMEOUT);
        // Only members that answer go into the balanced clients: a request the balancer sends
        // to a dead member fails (tcp connect error), so one dead endpoint of several would fail
        // every few requests. With none answering, all are kept (and the first request says why).
        let live = live_endpoints(&cfg.endpoints, &probe).await;
        let first = if live.is_empty() {
            cfg.endpoints.clone()
        } else {
            live
        };
        // Campaigning blocks until elected: the election gets a client without a short timeout.
        let long = opts.clone().with_timeout(Duration::from_secs(365 * 86_400));
        let election_client = Client::connect(&first, Some(long))
            .await
            .map_err(etcd_unavailable)?;
        let client = Client::connect(&first, Some(opts))
            .await
            .map_err(etcd_unavailable)?;
        let guard = if cfg.endpoints.len() > 1 {
            let stop = tokio_util::sync::CancellationToken::new();
            tokio::spawn(track_endpoints(
                cfg.endpoints.clone(),
                first,
                probe,
                [client.clone(), election_client.clone()],
                stop.clone(),
            ));
            Some(Arc::new(stop.drop_guard()))
        } else {
            None
        };
        let prefix = if cfg.prefix.is_empty() {
            "/factotum".to_string()
        } else {
            cfg.prefix.trim_end_matches('/').to_string()
        };
        Ok(EtcdStore {
            client,
            election_client,
            prefix,
            fence: None,
            writes: None,
            _tracking: guard,
            patience: Arc::default(),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A client whose requests may block as long as they need (for campaigning).
    pub fn election_client(&self) -> &Client {
        &self.election_client
    }

    /// The key prefix, without a trailing slash.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// This store with every write fenced on `fence` (a leader's store).
    pub fn fenced(&self, fence: Fence) -> EtcdStore {
        let writes = Writes::new(format!("{}/writes/{:020}", self.prefix, fence.epoch()));
        EtcdStore {
            fence: Some(Arc::new(fence)),
            writes: Some(Arc::new(tokio::sync::Mutex::new(writes))),
            ..self.clone()
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}/{key}", self.prefix)
    }
}

impl Store for EtcdStore {
    async fn commit(&self, ops: Vec<StoreOp>) -> Result<(), StoreError> {
        let mut kv = self.client.kv_client();
        // One write at a time per term: the counter orders them.
        let mut writes = match &self.writes {
            Some(w) => Some(w.lock().await),
            None => None,
        };
        // etcd refuses a transaction that names a key twice: keep each key's last write.
        let ops = last_write_per_key(ops);
        for chunk in ops.chunks(MAX_OPS_PER_COMMIT) {
            let mut txn_ops: Vec<TxnOp> = chunk
                .iter()
                .map(|op| match op {
                    StoreOp::Put { key, value } => TxnOp::put(self.key(key), value.clone(), None),
                    StoreOp::Delete { key } => TxnOp::delete(self.key(key), None),
                    StoreOp::DeletePrefix { prefix } => {
                        TxnOp::delete(self.key(prefix), Some(DeleteOptions::new().with_prefix()))
                    }
                })
                .collect();
            let mut when = Vec::new();
            let mut otherwise = Vec::new();
            if let Some(fence) = &self.fence {
                when.push(Compare::create_revision(
                    fence.key(),
                    CompareOp::Equal,
                    fence.revision(),
                ));
            }
            if let Some(w) = writes.as_deref() {
                when.push(w.compare());
                txn_ops.extend(w.ops(&self.prefix));
                otherwise.push(TxnOp::get(w.key.as_str(), None));
            }
            let txn = Txn::new().when(when).and_then(txn_ops).or_else(otherwise);
            let limit = self.patience.limit();
            let begun = Instant::now();
            let answer = tokio::time::timeout(limit, kv.txn(txn)).await;
            match &answer {
                Ok(Ok(_)) => self.patience.record(Some(begun.elapsed())),
                // Refused (no leader, a member gone): says nothing of speed.
                Ok(Err(e)) => tracing::debug!(error = %e, "an etcd write was refused"),
                Err(_) => {
                    tracing::debug!(?limit, "an etcd write got no answer");
                    self.patience.record(None);
                }
            }
            let resp = answer
                .map_err(|_| unavailable(format!("etcd did not answer within {limit:?}")))?
                .map_err(etcd_unavailable)?;
            let applied = resp.succeeded()
                || writes
                    .as_deref()
                    .is_some_and(|w| w.applied(counter_read(&resp).as_deref()));
            if !applied {
                // The fence failed (another leader), or the counter is not where this term
                // left it: either way this store's writes are no longer the leader's.
                return Err(StoreError::Fenced);
            }
            if let Some(w) = writes.as_deref_mut() {
                w.done += 1;
            }
        }
        Ok(())
    }

    fn epoch(&self) -> u64 {
        self.fence.as_ref().map_or(0, |f| f.epoch())
    }

    async fn scan_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut kv = self.client.kv_client();
        let full = self.key(prefix);
        // From just after `after` (a key followed by a zero byte) to the end of the prefix.
        let start: Vec<u8> = match after {
            Some(a) => {
                let mut k = self.key(a).into_bytes();
                k.push(0);
                k
            }
            None => full.clone().into_bytes(),
        };
        let end = prefix_end(full.as_bytes());
        let opts = GetOptions::new()
            .with_range(end)
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        let resp = kv.get(start, Some(opts)).await.map_err(etcd_unavailable)?;
        let strip = self.prefix.len() + 1;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = std::str::from_utf8(kv.key()).ok()?;
                Some((key.get(strip..)?.to_string(), kv.value().to_vec()))
            })
            .collect())
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut kv = self.client.kv_client();
        let resp = kv
            .get(self.key(prefix), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd_unavailable)?;
        let strip = self.prefix.len() + 1;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = std::str::from_utf8(kv.key()).ok()?;
                Some((key.get(strip..)?.to_string(), kv.value().to_vec()))
            })
            .collect())
    }
}

/// The end of etcd's range for a prefix: the prefix with its last byte incremented (bytes of
/// 0xff dropped first).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}
