//! The one way the client commands reach a coordinator ([`with_client`]: the addresses given,
//! tried in order, a follower's or a missing leader's answer retried) and read its refusals
//! ([`refused`]: the exit-code table and the message in the CLI's terms).

use std::time::Duration;

use factotum_common::format::error_chain;
use factotum_proto::jobs::jobs_client::JobsClient;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::cli::Remote;
use crate::exit;
use crate::load::Failure;
use crate::out::errln;
use crate::route::{Found, Route, Step};

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure {
            code: exit::COORDINATOR,
            message: format!("Error: cannot start the runtime: {e}"),
            unavailable: None,
        })
}

/// Runs one client command, printing its failure and returning the exit code. The given
/// coordinators are tried in order (see [`Route`]); one that cannot serve it now (a follower, or
/// one between leaders) is retried for up to 30 s: at the leader it names, or later.
pub fn with_client<F>(remote: &Remote, f: impl Fn(Client) -> F) -> u8
where
    F: std::future::Future<Output = Result<u8, Failure>>,
{
    let result = addresses(remote).and_then(|given| {
        runtime()?.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let mut route = Route::new(given);
            loop {
                let url = route.url().to_string();
                let (failure, found) = match connect(&url, remote).await {
                    Ok(client) => match f(client).await {
                        Err(e) => match e.unavailable.clone() {
                            Some(leader) => (e, Found::Follower(leader)),
                            None => return Err(e),
                        },
                        done => return done,
                    },
                    Err(why) => (unreachable(&[(url, why.clone())]), Found::Unreachable(why)),
                };
                if tokio::time::Instant::now() >= deadline {
                    return Err(failure);
                }
                match route.after(found) {
                    Step::Now => {}
                    Step::AfterPause => tokio::time::sleep(Duration::from_millis(300)).await,
                    Step::GiveUp => return Err(unreachable(route.unreachable())),
                }
            }
        })
    });
    match result {
        Ok(code) => code,
        Err(f) => {
            errln!("{}", f.message);
            f.code
        }
    }
}

/// The addresses given (`--coordinator`, repeated or comma-separated), each checked to be a URL.
pub fn addresses(remote: &Remote) -> Result<Vec<String>, Failure> {
    let given: Vec<String> = remote
        .coordinator
        .iter()
        .map(|a| a.trim())
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    if given.is_empty() {
        return Err(Failure::args(
            "Error: no coordinator address given (set --coordinator or FACTOTUM_COORDINATOR)",
        ));
    }
    for url in &given {
        tonic::transport::Endpoint::from_shared(url.clone()).map_err(|e| {
            Failure::args(format!(
                "Error: '{url}' is not a coordinator URL like http://127.0.0.1:7400 ({e})"
            ))
        })?;
    }
    Ok(given)
}

/// The coordinators that could not be reached, and why: one failure for them all.
fn unreachable(tried: &[(String, String)]) -> Failure {
    let message = match tried {
        [(url, why)] => format!(
            "Error: cannot reach the coordinator at {url}: {why} (set --coordinator or FACTOTUM_COORDINATOR)"
        ),
        _ => format!(
            "Error: cannot reach any of the coordinators: {} (set --coordinator or FACTOTUM_COORDINATOR)",
            tried
                .iter()
                .map(|(url, why)| format!("{url}: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    };
    Failure {
        code: exit::COORDINATOR,
        message,
        unavailable: None,
    }
}

/// Connects to one coordinator; the error says why not.
pub async fn connect(url: &str, remote: &Remote) -> Result<Client, String> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("not a URL ({e})"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        let tls = remote.tls.config().map_err(|e| e.to_string())?;
        endpoint = endpoint.tls_config(tls).map_err(|e| error_chain(&e))?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        let why = error_chain(&e);
        // A plaintext URL to a TLS port: the server hangs up on the HTTP/2 preface.
        if url.starts_with("http://") {
            format!("{why} (if the coordinator serves TLS, use an https:// URL and --tls-ca)")
        } else {
            why
        }
    })?;
    let limit = remote.max_message_size;
    let token = match &remote.token {
        Some(t) => Some(
            format!("Bearer {}", t.trim())
                .parse()
                .map_err(|_| "the token has characters a header cannot carry".to_string())?,
        ),
        None => None,
    };
    Ok(JobsClient::with_interceptor(channel, Credentials(token))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit))
}

/// Adds the token (`--token`) to every call.
#[derive(Debug, Clone)]
pub struct Credentials(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// A client of a coordinator's `Jobs`, with the credentials given.
pub type Client = JobsClient<tonic::service::interceptor::InterceptedService<Channel, Credentials>>;

/// The `ErrorInfo` reason of a refusal, if it carries one.
pub fn reason_of(status: &tonic::Status) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
}

/// The CLI's one exit-code table, read from a refusal's details: 1 an invalid factfile
/// (INVALID_FACTFILE), 3 any other bad argument, 4 every other refusal by (or failure of) a
/// coordinator. (0 and 2 are the run's own outcome.)
pub fn exit_code(status: &tonic::Status) -> u8 {
    match (status.code(), reason_of(status).as_deref()) {
        (_, Some("INVALID_FACTFILE")) => exit::INVALID_FACTFILE,
        (tonic::Code::InvalidArgument, _) => exit::BAD_ARGUMENTS,
        _ => exit::COORDINATOR,
    }
}

/// The CLI flag behind a request field the coordinator named.
fn flag_of(field: &str) -> Option<&'static str> {
    Some(match field {
        "env_json" => "--env",
        "start" => "--start",
        "webhooks" => "--webhook",
        "constraints" => "--constraint",
        "tags" => "--tag",
        "max_output" => "--max-stdouterr-size",
        "run_id" => "the run reference",
        _ => return None,
    })
}

/// A refused request: its exit code (see [`exit_code`]) and a message in the CLI's terms.
pub fn refused(status: tonic::Status) -> Failure {
    let details = status.get_error_details();
    let reason = details.error_info().map(|i| i.reason.as_str());
    let field = details
        .bad_request()
        .and_then(|b| b.field_violations.first())
        .and_then(|v| flag_of(&v.field));
    let text = status.message();
    let message = match (status.code(), reason) {
        // Factotum's own words: "'<file>' is not a valid factotum factfile: ...".
        (_, Some("INVALID_FACTFILE")) => text.to_string(),
        (_, Some("DUPLICATE_RUN")) => format!(
            "Error: {}; pass --allow-concurrent to start another anyway",
            text.split("; set allow_concurrent").next().unwrap_or(text)
        ),
        (tonic::Code::InvalidArgument, _) => match field {
            Some(flag) => format!("Error: {text} (check {flag})"),
            None => format!("Error: {text}"),
        },
        (tonic::Code::NotFound, _) => format!("Error: {text}"),
        // Not the coordinator's answer: the connection broke (a plaintext client on a TLS
        // port is hung up on).
        _ if text.contains("h2 protocol error") || text.starts_with("transport error") => format!(
            "Error: cannot talk to the coordinator: {text} (if it serves TLS, use an https:// URL and --tls-ca)"
        ),
        _ => format!("Error: the coordinator refused the request: {text}"),
    };
    // A follower's answer (it names the leader, or no leader yet): worth retrying. Any other
    // UNAVAILABLE (the leader's store is down) is reported at once.
    let unavailable = factotum_proto::leader_hint(&status);
    Failure {
        code: exit_code(&status),
        message,
        unavailable,
    }
}
