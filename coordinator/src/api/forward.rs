//! A follower forwards each client call to the leader, so a client pointed at any coordinator
//! (or at a VIP in front of them all) just works, as with Nomad or Consul. The leader's address
//! travels back in the `factotum-leader` header of every forwarded answer; a call is forwarded
//! at most once (a coordinator that gets a forwarded call and does not lead answers
//! UNAVAILABLE naming whom it believes leads), and only while a leader is known. A watch
//! forwarded to a leader that dies is resumed at the next one ([`outliving`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use factotum_proto::jobs as pb;
use factotum_proto::jobs::jobs_client::JobsClient;
use factotum_proto::LEADER_METADATA;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status};

use super::Routing;
use crate::engine::Engine;
use crate::wire::jobs as wire;

/// Marks a call a coordinator forwarded: the receiver never forwards it again.
pub const FORWARDED: &str = "factotum-forwarded";
/// The name of the client certificate a forwarded call was made with, as the follower that
/// forwards it saw it; taken only from a peer with a coordinator's certificate.
pub const FORWARDED_CLIENT: &str = "factotum-forwarded-client";

/// Where a call goes.
pub enum Target {
    /// This coordinator leads.
    Local(Engine),
    /// The leader, at `addr`.
    Leader {
        client: JobsClient<Channel>,
        addr: String,
    },
}

/// The current leader's address and a client on one channel to it.
type Cached = Option<(String, JobsClient<Channel>)>;

/// The follower's side: one channel to the current leader, made when first needed and
/// replaced when the leader changes.
#[derive(Debug, Clone)]
pub struct Forwarder {
    max_message: usize,
    /// TLS to the leader (`https://` addresses): `--tls-ca`, and this coordinator's certificate.
    tls: Option<ClientTlsConfig>,
    cached: Arc<Mutex<Cached>>,
}

impl Forwarder {
    pub fn new(max_message: usize, tls: Option<ClientTlsConfig>) -> Forwarder {
        Forwarder {
            max_message,
            tls,
            cached: Arc::default(),
        }
    }

    /// Where `request` goes: the engine while this coordinator leads, else the leader it
    /// knows; UNAVAILABLE (naming the leader, if known) when there is none, or when the call
    /// was already forwarded once.
    pub fn target<T>(&self, role: &Routing, request: &Request<T>) -> Result<Target, Status> {
        let refusal = match role.engine() {
            Ok(engine) => return Ok(Target::Local(engine)),
            Err(refusal) => refusal,
        };
        let leader = role.leader.borrow().clone();
        match leader {
            Some(addr) if !request.metadata().contains_key(FORWARDED) => Ok(Target::Leader {
                client: self.client(&addr)?,
                addr,
            }),
            _ => Err(refusal),
        }
    }

    fn client(&self, addr: &str) -> Result<JobsClient<Channel>, Status> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((a, c)) = cached.as_ref() {
            if a == addr {
                return Ok(c.clone());
            }
        }
        let bad = |e: tonic::transport::Error| {
            Status::unavailable(format!("the leader's address {addr}: {e}"))
        };
        let mut endpoint = Endpoint::from_shared(addr.to_string())
            .map_err(bad)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        if let (Some(tls), true) = (&self.tls, addr.starts_with("https://")) {
            endpoint = endpoint.tls_config(tls.clone()).map_err(bad)?;
        }
        let channel = endpoint.connect_lazy();
        let client = JobsClient::new(channel)
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message);
        *cached = Some((addr.to_string(), client.clone()));
        Ok(client)
    }
}

/// The call to send on: the caller's metadata (a bearer token included), marked forwarded,
/// with the name of the client certificate the caller presented (`client_cert`) — never one the
/// caller claims itself.
pub fn onward<T>(request: Request<T>, client_cert: Option<String>) -> Request<T> {
    let (mut metadata, _, message) = request.into_parts();
    metadata.insert(FORWARDED, MetadataValue::from_static("1"));
    metadata.remove(FORWARDED_CLIENT);
    if let Some(name) = client_cert.and_then(|c| c.parse::<MetadataValue<_>>().ok()) {
        metadata.insert(FORWARDED_CLIENT, name);
    }
    Request::from_parts(metadata, Default::default(), message)
}

/// The leader's answer (or refusal), naming the leader.
pub fn answered<T>(answer: Result<Response<T>, Status>, addr: &str) -> Result<Response<T>, Status> {
    let value = addr.parse::<MetadataValue<_>>().ok();
    match answer {
        Ok(mut response) => {
            if let Some(v) = value {
                response.metadata_mut().insert(LEADER_METADATA, v);
            }
            Ok(response)
        }
        Err(mut status) => {
            if let Some(v) = value {
                status.metadata_mut().insert(LEADER_METADATA, v);
            }
            Err(status)
        }
    }
}

/// How long a forwarded watch whose leader died waits for another leader.
const RESUME_FOR: Duration = Duration::from_secs(60);

type Events =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::RunEvent, Status>> + Send>>;

/// A watch forwarded to the leader that outlives the leader: when the leader's stream breaks
/// before the run's end, this follower watches again (`resume`) at whoever leads next — another
/// coordinator, or itself — and the caller's stream goes on with a gap and a snapshot (the
/// transitions missed can be told from it). Any client watching through a follower survives a
/// change of leader without doing anything.
pub fn outliving(
    role: Routing,
    forward: Forwarder,
    metadata: MetadataMap,
    run_id: String,
    first: Events,
) -> Events {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut events = first;
        loop {
            loop {
                match events.next().await {
                    Some(Ok(ev)) => {
                        let end = matches!(ev.event, Some(pb::run_event::Event::End(_)));
                        if tx.send(Ok(ev)).await.is_err() || end {
                            return;
                        }
                    }
                    Some(Err(status)) if !resumable(&status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    Some(Err(_)) | None => break, // the leader went away
                }
            }
            tracing::info!(run = %run_id, "a forwarded watch broke: resuming it at the next leader");
            events = match resume(&role, &forward, &metadata, &run_id, &tx).await {
                Some(events) => events,
                None => return,
            };
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// The leader this coordinator knows now (the watch's guard released at once).
fn leader_now(role: &Routing) -> Option<String> {
    role.leader.borrow().clone()
}

/// Whether a broken watch is worth resuming elsewhere (its coordinator went away or cannot
/// serve now): the rule for a follower resuming a forwarded watch and for the CLI alike.
pub fn resumable(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

/// The run's events again from whoever leads now (`resume`: a gap, a snapshot, then what
/// comes), tried until [`RESUME_FOR`] has passed; `None` when the caller has gone or the
/// watch cannot be resumed (the caller is told why).
async fn resume(
    role: &Routing,
    forward: &Forwarder,
    metadata: &MetadataMap,
    run_id: &str,
    tx: &mpsc::Sender<Result<pb::RunEvent, Status>>,
) -> Option<Events> {
    let deadline = tokio::time::Instant::now() + RESUME_FOR;
    loop {
        let attempt: Result<Events, Status> = match role.engine() {
            Ok(engine) => match engine.watch_resumed(run_id).await {
                Ok(watch) => Ok(Box::pin(watch.map(|ev| Ok(wire::event(ev))))),
                Err(e) => Err(e.into()),
            },
            Err(no_engine) => match leader_now(role) {
                Some(addr) => match forward.client(&addr) {
                    Ok(mut client) => {
                        let mut request = Request::new(pb::WatchRunRequest {
                            run_id: run_id.to_string(),
                            resume: true,
                        });
                        *request.metadata_mut() = metadata.clone();
                        request
                            .metadata_mut()
                            .insert(FORWARDED, MetadataValue::from_static("1"));
                        match client.watch_run(request).await {
                            Ok(r) => Ok(Box::pin(r.into_inner()) as Events),
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                },
                None => Err(no_engine),
            },
        };
        match attempt {
            Ok(events) => return Some(events),
            Err(status) if resumable(&status) && tokio::time::Instant::now() < deadline => {
                if tx.is_closed() {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return None;
            }
        }
    }
}
