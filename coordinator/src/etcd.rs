//! The etcd store: the same key layout as the memory store under a prefix, every batch one etcd
//! transaction, fenced on the leader key when the coordinator holds leadership.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Txn, TxnOp,
};

use crate::fence::Fence;
use crate::store::{last_write_per_key, Store, StoreError, StoreOp, MAX_OPS_PER_COMMIT};

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

/// A leader's writes, numbered: each transaction also requires the term's write counter to
/// hold the number of the write before it, and sets it to its own. A write given up on (no
/// answer in time) and retried can then never be applied *after* a newer one — its compare
/// fails — and a retry of a write that did get through is recognised (the counter holds its
/// number) instead of applied twice.
#[derive(Debug)]
struct Writes {
    /// `<prefix>/writes/<epoch, 20 digits>`: one per term, so they sort by term.
    key: String,
    /// Names this writer in the counter's values: a second writer of the same term (which
    /// should never exist) finds the counter foreign and stops.
    writer: u64,
    /// Writes of this term applied so far.
    done: u64,
}

impl Writes {
    fn new(key: String) -> Writes {
        Writes {
            key,
            writer: rand::random(),
            done: 0,
        }
    }

    /// The counter's value after write `n`.
    fn value(&self, n: u64) -> String {
        format!("{n} {:016x}", self.writer)
    }

    /// What the next write requires of the counter.
    fn compare(&self) -> Compare {
        if self.done == 0 {
            Compare::version(self.key.as_str(), CompareOp::Equal, 0)
        } else {
            Compare::value(self.key.as_str(), CompareOp::Equal, self.value(self.done))
        }
    }

    /// What the next write adds: the counter's new value; the first write of a term also
    /// deletes the counters of earlier terms (the keys sorting before its own).
    fn ops(&self, prefix: &str) -> Vec<TxnOp> {
        let mut ops = vec![TxnOp::put(
            self.key.as_str(),
            self.value(self.done + 1),
            None,
        )];
        if self.done == 0 {
            let older = DeleteOptions::new().with_range(self.key.as_str());
            ops.push(TxnOp::delete(format!("{prefix}/writes/"), Some(older)));
        }
        ops
    }

    /// Whether the counter as read shows the next write already applied (an earlier try of
    /// it got through).
    fn applied(&self, counter: Option<&[u8]>) -> bool {
        counter == Some(self.value(self.done + 1).as_bytes())
    }
}

/// Any request's limit (the client's): one in flight when etcd's raft leader dies hangs until
/// then, and is retried on a live member.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// A write's limit while etcd answers quickly: half etcd's own election timeout (1 s by
/// default), so a write stuck on a dead raft leader holds dispatch at most this long past
/// etcd's re-election.
const QUICK: Duration = Duration::from_millis(500);
/// Writes in a row without an answer after which etcd is taken to be slow rather than between
/// leaders (a re-election takes one to two election timeouts: up to four quick limits).
const UNANSWERED_BEFORE_SLOW: u32 = 4;

/// How long a write may take before it is given up (and its batch retried, soon, on a live
/// member): [`QUICK`] while etcd answers writes well within it, so a write stuck on a raft
/// leader that died pauses dispatch about as long as etcd takes to elect another (a member
/// that knows it has no leader answers at once: requests ask for one); the full
/// [`REQUEST_TIMEOUT`] once writes are slow, or after several in a row got no answer, so a slow but
/// healthy etcd is not given up on again and again.
#[derive(Debug, Default)]
struct Patience {
    /// The last answered write took more than half of [`QUICK`].
    slow: AtomicBool,
    /// Writes in a row that got no answer within their limit.
    unanswered: AtomicU32,
}

impl Patience {
    fn limit(&self) -> Duration {
        let unanswered = self.unanswered.load(Ordering::Relaxed);
        if self.slow.load(Ordering::Relaxed) || unanswered >= UNANSWERED_BEFORE_SLOW {
            REQUEST_TIMEOUT
        } else {
            QUICK
        }
    }

    /// A write's time, `None` when it got no answer within the limit.
    fn record(&self, took: Option<Duration>) {
        match took {
            Some(t) => {
                self.slow.store(t > QUICK / 2, Ordering::Relaxed);
                self.unanswered.store(0, Ordering::Relaxed);
            }
            None => {
                self.unanswered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
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

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// An etcd client error as a store error.
fn etcd_unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(describe(&e))
}

/// An etcd client error in words a person can act on. The client's own text says little about
/// what to fix when TLS or authentication is wrong ("invalid peer certificate: UnknownIssuer",
/// a bare "transport error", or only "operation was canceled" when etcd drops a client whose
/// certificate it does not accept): those say what failed and which flags to check; any other
/// error is the client's text.
pub fn describe(e: &etcd_client::Error) -> String {
    let full = e.to_string();
    let message = match e {
        etcd_client::Error::GRpcStatus(s) => s.message().to_string(),
        _ => full.clone(),
    };
    if let Some(at) = full.find("invalid peer certificate") {
        let why = if message.contains("invalid peer certificate") {
            message
        } else {
            full[at..].to_string()
        };
        return if why.contains("UnknownIssuer") {
            format!(
                "etcd's TLS certificate could not be verified: it is not signed by the CA given \
                 with --etcd-ca (or no --etcd-ca was given) ({why})"
            )
        } else {
            format!(
                "etcd's TLS certificate could not be verified ({why}): it must be signed by the \
                 CA given with --etcd-ca, name the host of the etcd URL, and be in date"
            )
        };
    }
    if let Some(at) = full.find("received fatal alert: ") {
        let alert: String = full[at + "received fatal alert: ".len()..]
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        let about_the_client = [
            "BadCertificate",
            "CertificateRequired",
            "UnknownCA",
            "CertificateUnknown",
            "UnsupportedCertificate",
            "CertificateExpired",
            "AccessDenied",
        ];
        return if about_the_client.contains(&alert.as_str()) {
            format!(
                "etcd refused this client's TLS certificate (received fatal alert: {alert}): an \
                 etcd with --client-cert-auth needs a client certificate signed by a CA in its \
                 --trusted-ca-file, given with --etcd-cert and --etcd-key"
            )
        } else {
            format!("the TLS handshake with etcd failed (received fatal alert: {alert})")
        };
    }
    if let etcd_client::Error::GRpcStatus(s) = e {
        let closed = (s.code() == tonic::Code::Cancelled && full.contains("connection closed"))
            || full.contains("broken pipe");
        if closed {
            return "etcd closed the connection: it stopped, or it requires client \
                    certificates (--client-cert-auth) and does not accept this client's: give \
                    a client certificate signed by a CA in its --trusted-ca-file with \
                    --etcd-cert and --etcd-key"
                .to_string();
        }
    }
    if message.contains("authentication failed") {
        return format!(
            "etcd refused the user or password (--etcd-user, --etcd-password): {message}"
        );
    }
    if message.contains("user name is empty") {
        return format!(
            "etcd requires authentication: give --etcd-user and --etcd-password ({message})"
        );
    }
    if message.contains("TLS options are only supported with HTTPS URLs") {
        return format!(
            "--etcd-ca, --etcd-cert and --etcd-key need https:// etcd URLs ({message})"
        );
    }
    full
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

/// The write counter as the failed branch of a transaction read it.
fn counter_read(resp: &etcd_client::TxnResponse) -> Option<Vec<u8>> {
    resp.op_responses().into_iter().find_map(|op| match op {
        etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
        _ => None,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_recognised_as_applied_only_by_its_own_number_and_writer() {
        let mut w = Writes::new("/f/writes/00000000000000000007".into());
        let first = w.value(1);
        assert!(
            w.applied(Some(first.as_bytes())),
            "an earlier try got through"
        );
        assert!(!w.applied(None), "nothing written yet");
        w.done = 1;
        assert!(
            !w.applied(Some(first.as_bytes())),
            "the counter is where we left it"
        );
        assert!(w.applied(Some(w.value(2).as_bytes())));
        let other = Writes::new(w.key.clone());
        assert!(
            !w.applied(Some(other.value(2).as_bytes())),
            "another writer's"
        );
        // The first write of a term clears the counters of earlier terms, not its own.
        assert_eq!(w.ops("/f").len(), 1);
        w.done = 0;
        assert_eq!(w.ops("/f").len(), 2);
    }

    #[test]
    fn writes_get_the_quick_limit_only_while_etcd_answers_quickly() {
        let p = Patience::default();
        assert_eq!(p.limit(), QUICK);
        p.record(Some(Duration::from_millis(20)));
        assert_eq!(p.limit(), QUICK);
        for _ in 1..UNANSWERED_BEFORE_SLOW {
            p.record(None); // no answer (etcd is between leaders): retried as quickly
            assert_eq!(p.limit(), QUICK);
        }
        p.record(None); // again and again: perhaps etcd is just slow
        assert_eq!(p.limit(), REQUEST_TIMEOUT);
        p.record(Some(Duration::from_millis(1500))); // answered, but slowly
        assert_eq!(p.limit(), REQUEST_TIMEOUT);
        p.record(Some(Duration::from_millis(30)));
        assert_eq!(p.limit(), QUICK);
    }
}
