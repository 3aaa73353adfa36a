//! The gRPC client commands: submit, status, watch, cancel, runs, agents.

use std::collections::BTreeMap;
use std::time::Duration;

use factotum_common::constraint::{self, Constraint, Placement};
use factotum_common::format::{error_chain, human};
use factotum_common::run::{JobState, TaskState};
use factotum_common::tags::parse_tags;
use factotum_coordinator::{spec, wire, WatchEvent};
use factotum_proto as pb;
use factotum_proto::jobs_client::JobsClient;
use tonic::transport::Channel;

use crate::cli::{Remote, RerunArgs, RunRef, SubmitArgs};
use crate::console::Console;
use crate::exit;
use crate::load::Failure;
use crate::out::{errln, out, outln};
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
fn with_client<F>(remote: &Remote, f: impl Fn(JobsClient<Channel>) -> F) -> u8
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

/// A refused request, with the exit code `factotum run` would give the same problem.
fn refused(status: tonic::Status) -> Failure {
    let code = match (status.code(), status.details()) {
        (tonic::Code::InvalidArgument, b"factfile") => exit::INVALID_FACTFILE,
        (tonic::Code::InvalidArgument, _) => exit::BAD_ARGUMENTS,
        _ => exit::COORDINATOR,
    };
    let message = match status.code() {
        tonic::Code::InvalidArgument => status.message().to_string(),
        tonic::Code::NotFound => format!("Error: {}", status.message()),
        _ => format!(
            "Error: the coordinator refused the request: {}",
            status.message()
        ),
    };
    // A follower's answer (it names the leader, or no leader yet): worth retrying. Any other
    // UNAVAILABLE (the leader's store is down) is reported at once.
    let unavailable = factotum_proto::leader_hint(&status);
    Failure {
        code,
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
        placement: args.placement.map(|p| match p {
            Placement::Sticky => pb::Placement::Sticky as i32,
            Placement::Spread => pb::Placement::Spread as i32,
        }),
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

pub fn cancel(args: RunRef) -> u8 {
    let run = args.run.clone();
    with_client(&args.remote, |mut client| {
        let run = run.clone();
        async move {
            client
                .cancel_run(pb::CancelRunRequest {
                    run_id: run.clone(),
                })
                .await
                .map_err(refused)?;
            outln!("run {run} cancelled");
            Ok(exit::OK)
        }
    })
}

pub fn status(args: RunRef) -> u8 {
    let run = args.run.clone();
    with_client(&args.remote, |mut client| {
        let run = run.clone();
        async move {
            let s = client
                .get_run(pb::GetRunRequest { run_id: run })
                .await
                .map_err(refused)?
                .into_inner();
            outln!("run       {}", s.run_id);
            outln!("job       {} ({})", s.job_name, s.job_reference);
            outln!("state     {}", s.state);
            outln!("started   {}", s.start_time);
            outln!("duration  {}", s.duration);
            if !s.rerun_of.is_empty() {
                outln!("rerun of  {}", s.rerun_of);
            }
            if !s.tags.is_empty() {
                let mut tags: Vec<String> =
                    s.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                tags.sort();
                outln!("tags      {}", tags.join(", "));
            }
            if !s.waiting_reason.is_empty() {
                outln!("waiting   {}", s.waiting_reason);
            }
            outln!();
            let rows: Vec<[String; 6]> = s
                .tasks
                .iter()
                .map(|t| {
                    [
                        t.name.clone(),
                        t.state.clone(),
                        if t.attempt > 1 {
                            t.attempt.to_string()
                        } else {
                            String::new()
                        },
                        t.agent.clone(),
                        t.return_code.map(|c| c.to_string()).unwrap_or_default(),
                        t.error_message.clone(),
                    ]
                })
                .collect();
            out!(
                "{}",
                table(
                    ["TASK", "STATE", "ATTEMPT", "AGENT", "CODE", "REASON"],
                    &rows
                )
            );
            Ok(exit::OK)
        }
    })
}

pub fn runs(args: Remote) -> u8 {
    with_client(&args, |mut client| async move {
        let list = client
            .list_runs(pb::ListRunsRequest {})
            .await
            .map_err(refused)?
            .into_inner();
        let rows: Vec<[String; 5]> = list
            .runs
            .iter()
            .map(|r| {
                let done = r
                    .tasks
                    .iter()
                    .filter(|t| TaskState::parse(&t.state).is_some_and(TaskState::is_terminal))
                    .count();
                [
                    r.run_id.clone(),
                    r.job_name.clone(),
                    r.state.clone(),
                    format!("{done}/{}", r.tasks.len()),
                    r.start_time.clone(),
                ]
            })
            .collect();
        out!(
            "{}",
            table(["RUN", "JOB", "STATE", "TASKS DONE", "STARTED"], &rows)
        );
        Ok(exit::OK)
    })
}

pub fn agents(args: Remote) -> u8 {
    with_client(&args, |mut client| async move {
        let list = client
            .list_agents(pb::ListAgentsRequest {})
            .await
            .map_err(refused)?
            .into_inner();
        let rows: Vec<[String; 7]> = list
            .agents
            .iter()
            .map(|a| {
                let mut labels: Vec<String> =
                    a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                labels.sort();
                let slots = if a.slots == 0 {
                    format!("{}/-", a.in_use)
                } else {
                    format!("{}/{}", a.in_use, a.slots)
                };
                [
                    a.agent_id.clone(),
                    a.hostname.clone(),
                    a.ips.join(" "),
                    labels.join(","),
                    slots,
                    format!("{} ago", human(Duration::from_millis(a.last_heard_ms))),
                    if a.connected {
                        "connected"
                    } else {
                        "disconnected"
                    }
                    .to_string(),
                ]
            })
            .collect();
        out!(
            "{}",
            table(
                [
                    "NAME",
                    "HOST",
                    "IPS",
                    "LABELS",
                    "SLOTS",
                    "LAST HEARTBEAT",
                    "SESSION"
                ],
                &rows
            )
        );
        Ok(exit::OK)
    })
}

/// Left-aligned columns separated by two spaces.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut width = header.map(|h| h.chars().count());
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            s.push_str(c);
            if i + 1 < N {
                s.push_str(&" ".repeat(width[i] - c.chars().count() + 2));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}
