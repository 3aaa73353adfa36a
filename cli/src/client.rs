//! The gRPC client commands that act on runs (submit, watch, cancel, rerun), and the one way
//! to reach a coordinator and read its refusals (the commands that show things are in
//! [`crate::show`]).

use std::collections::BTreeMap;
use std::time::Duration;

use factotum_common::constraint::{self, Constraint};
use factotum_common::format::error_chain;
use factotum_common::run::JobState;
use factotum_common::tags::parse_tags;
use factotum_coordinator::wire::jobs as wire;
use factotum_coordinator::{spec, WatchEvent};
use factotum_proto::jobs as pb;
use factotum_proto::jobs::jobs_client::JobsClient;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::cli::{CancelArgs, Remote, RerunArgs, RunRef, SubmitArgs};
use crate::console::Console;
use crate::exit;
use crate::load::Failure;
use crate::out::{errln, outln};
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
pub fn with_client<F>(remote: &Remote, f: impl Fn(JobsClient<Channel>) -> F) -> u8
where
    F: std::future::Future<Output = Result<u8, Failure>>,
{
    let result = addresses(remote).and_then(|given| {
        runtime()?.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let mut route = Route::new(given);
            loop {
                let url = route.url().to_string();
                let (failure, found) = match connect(&url, remote.max_message_size).await {
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
fn addresses(remote: &Remote) -> Result<Vec<String>, Failure> {
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
async fn connect(url: &str, limit: usize) -> Result<JobsClient<Channel>, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("not a URL ({e})"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let channel = endpoint.connect().await.map_err(|e| error_chain(&e))?;
    Ok(JobsClient::new(channel)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit))
}

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

pub fn submit(args: SubmitArgs) -> u8 {
    let console = Console::new(args.job.no_colour);
    let request = match request(&args) {
        Ok(r) => r,
        Err(f) => {
            errln!("{}", f.message);
            return f.code;
        }
    };
    let wait = args.wait;
    with_client(&args.remote, |mut client| {
        let request = request.clone();
        async move {
            let submitted = client
                .submit_run(request)
                .await
                .map_err(refused)?
                .into_inner();
            started(&mut client, &submitted.run_id, wait, console).await
        }
    })
}

pub fn rerun(args: RerunArgs) -> u8 {
    let console = Console::new(args.no_colour);
    let (run, from_failed, wait) = (args.run.clone(), args.from_failed, args.wait);
    with_client(&args.remote, |mut client| {
        let run = run.clone();
        async move {
            let submitted = client
                .rerun_run(pb::RerunRunRequest {
                    run_id: run,
                    from_failed,
                })
                .await
                .map_err(refused)?
                .into_inner();
            started(&mut client, &submitted.run_id, wait, console).await
        }
    })
}

fn request(args: &SubmitArgs) -> Result<pb::SubmitRunRequest, Failure> {
    // Read within the default --max-factfile-size (the coordinator applies its own limits).
    let text = spec::read_factfile(&args.job.factfile, spec::InputLimits::default())?;
    let mut constraints = vec![];
    for raw in &args.job.constraint {
        let kind = match constraint::parse(raw).map_err(|e| Failure::args(format!("Error: {e}")))? {
            Constraint::Host { value, .. } => pb::constraint::Kind::Host(value),
            Constraint::Label { key, value } => {
                pb::constraint::Kind::Label(pb::Label { key, value })
            }
        };
        constraints.push(pb::Constraint { kind: Some(kind) });
    }
    let tags: BTreeMap<String, String> = parse_tags(args.job.tag.iter().map(String::as_str));
    Ok(pb::SubmitRunRequest {
        factfile: text,
        factfile_name: args.job.factfile.display().to_string(),
        env_json: args.job.env.clone().unwrap_or_default(),
        tags: tags.into_iter().collect(),
        start: args.job.start.clone(),
        webhooks: args.job.webhook.clone(),
        constraints,
        placement: args
            .placement
            .map_or(pb::Placement::Unspecified, wire::placement) as i32,
        max_output: u32::try_from(args.job.max_output()).unwrap_or(u32::MAX),
        dry_run: args.job.dry_run,
        allow_concurrent: args.allow_concurrent,
        idempotency_key: args.idempotency_key.clone().unwrap_or_default(),
    })
}

/// A run just started: print its reference, or (`--wait`) follow it to its end.
async fn started(
    client: &mut JobsClient<Channel>,
    run_id: &str,
    wait: bool,
    console: Console,
) -> Result<u8, Failure> {
    if !wait {
        outln!("{run_id}");
        return Ok(exit::OK);
    }
    follow(client, run_id, console, true).await
}

/// Prints a run's events like `factotum run` until it ends; SIGINT/SIGTERM cancel it (when
/// `cancel_on_signal`). Returns `run`'s exit code for the run's outcome.
async fn follow(
    client: &mut JobsClient<Channel>,
    run_id: &str,
    console: Console,
    cancel_on_signal: bool,
) -> Result<u8, Failure> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut stream = client
        .watch_run(pb::WatchRunRequest {
            run_id: run_id.to_string(),
        })
        .await
        .map_err(refused)?
        .into_inner();
    let (mut sigint, mut sigterm) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        _ => {
            return Err(Failure {
                code: exit::COORDINATOR,
                message: "Error: cannot install signal handlers".into(),
                unavailable: None,
            })
        }
    };
    let mut cancelled = false;
    loop {
        let name = tokio::select! {
            msg = stream.message() => match msg {
                Ok(Some(ev)) => {
                    match wire::event_from_pb(ev, run_id) {
                        Some(WatchEvent::Tasks(changes)) => console.task_changes(&changes),
                        Some(WatchEvent::Output { task, stream, line, .. }) => console.output(&task, stream, &line),
                        Some(WatchEvent::Done(summary)) => {
                            console.summary(&summary);
                            return Ok(if summary.state == JobState::Succeeded { exit::OK } else { exit::TASK_FAILED });
                        }
                        Some(WatchEvent::Lagged { skipped }) => console.lagged(skipped),
                        Some(WatchEvent::Job { .. }) | None => {}
                    }
                    if !cancel_on_signal && crate::out::stdout_closed() {
                        return Ok(exit::OK); // watching only, and nobody reads: stop watching
                    }
                    continue;
                }
                Ok(None) => return Err(Failure {
                    code: exit::COORDINATOR,
                    message: format!("Error: the coordinator ended the watch of run {run_id} before the run ended"),
                    unavailable: None,
                }),
                Err(status) => return Err(refused(status)),
            },
            _ = sigint.recv() => "SIGINT",
            _ = sigterm.recv() => "SIGTERM",
        };
        if !cancel_on_signal {
            return Ok(exit::OK); // watching only: stop watching, leave the run alone
        }
        if !cancelled {
            cancelled = true;
            console.warn(&format!("received {name}: cancelling run {run_id}"));
            client
                .cancel_run(pb::CancelRunRequest {
                    run_id: run_id.to_string(),
                    reason: format!("{name} received by the client following the run"),
                })
                .await
                .map_err(refused)?;
        }
    }
}

pub fn watch(args: RunRef) -> u8 {
    let console = Console::new(args.no_colour);
    let run = args.run.clone();
    with_client(&args.remote, |mut client| {
        let run = run.clone();
        async move { follow(&mut client, &run, console, false).await }
    })
}

pub fn cancel(args: CancelArgs) -> u8 {
    let run = args.run.run.clone();
    let reason = args.reason.clone().unwrap_or_default();
    with_client(&args.run.remote, |mut client| {
        let (run, reason) = (run.clone(), reason.clone());
        async move {
            let answer = client
                .cancel_run(pb::CancelRunRequest {
                    run_id: run.clone(),
                    reason,
                })
                .await;
            match answer {
                Ok(_) => outln!("run {run} cancelled"),
                // Cancelling is idempotent for the user: the run is over either way.
                Err(s) if reason_of(&s).as_deref() == Some("RUN_FINISHED") => {
                    outln!("run {run} had already finished")
                }
                Err(s) => return Err(refused(s)),
            }
            Ok(exit::OK)
        }
    })
}
