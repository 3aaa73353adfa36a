//! A follower forwards each client call to the leader, so a client pointed at any coordinator
//! (or at a VIP in front of them all) just works, as with Nomad or Consul. The leader's address
//! travels back in the `factotum-leader` header of every forwarded answer; a call is forwarded
//! at most once (a coordinator that gets a forwarded call and does not lead answers
//! UNAVAILABLE naming whom it believes leads), and only while a leader is known.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use factotum_proto::jobs::jobs_client::JobsClient;
use factotum_proto::LEADER_METADATA;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::Routing;
use crate::engine::Engine;

/// Marks a call a coordinator forwarded: the receiver never forwards it again.
pub const FORWARDED: &str = "factotum-forwarded";

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
    cached: Arc<Mutex<Cached>>,
}

impl Forwarder {
    pub fn new(max_message: usize) -> Forwarder {
        Forwarder {
            max_message,
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
        let channel = Endpoint::from_shared(addr.to_string())
            .map_err(|e| Status::unavailable(format!("the leader's address {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect_lazy();
        let client = JobsClient::new(channel)
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message);
        *cached = Some((addr.to_string(), client.clone()));
        Ok(client)
    }
}

/// The call to send on: the caller's metadata (credentials included), marked forwarded.
pub fn onward<T>(request: Request<T>) -> Request<T> {
    let (mut metadata, _, message) = request.into_parts();
    metadata.insert(FORWARDED, MetadataValue::from_static("1"));
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
