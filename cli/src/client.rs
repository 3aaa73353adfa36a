//! The gRPC client commands that act on runs: submit, watch, cancel, rerun (the commands that
//! show things are in [`crate::show`]; reaching a coordinator is [`crate::connect`]'s).

use std::collections::BTreeMap;

use factotum_common::constraint::{self, Constraint};
use factotum_common::tags::parse_tags;
use factotum_coordinator::spec;
use factotum_coordinator::wire::jobs as wire;
use factotum_proto::jobs as pb;

use crate::cli::{CancelArgs, Remote, RerunArgs, RunRef, SubmitArgs};
use crate::connect::{reason_of, refused, with_client, Client};
use crate::console::Console;
use crate::exit;
use crate::follow::follow;
use crate::json;
use crate::load::Failure;
use crate::out::{errln, outln};

pub fn submit(args: SubmitArgs) -> u8 {
    if let Some(refusal) = args.local_only.refusal() {
        errln!("{refusal}");
        return exit::BAD_ARGUMENTS;
    }
    let json = args.output.json();
    let mut console = Console::new(args.job.no_colour);
    if json {
        console = console.on_stderr();
    }
    let request = match request(&args) {
        Ok(r) => r,
        Err(f) => {
            errln!("{}", f.message);
            return f.code;
        }
    };
    let wait = args.wait;
    with_client(&args.remote, |mut client| {
        let (request, remote) = (request.clone(), args.remote.clone());
        async move {
            let submitted = client
                .submit_run(request)
                .await
                .map_err(refused)?
                .into_inner();
            if json && !wait {
                json::print(&json::Submitted {
                    run_id: &submitted.run_id,
                    job_reference: &submitted.job_reference,
                    existing: submitted.existing,
                });
                return Ok(exit::OK);
            }
            let code = started(&mut client, &remote, &submitted.run_id, wait, console).await?;
            if json {
                // The run has ended: its final status, as `status -o json` prints it.
                let run = client
                    .get_run(pb::GetRunRequest {
                        run_id: submitted.run_id.clone(),
                    })
                    .await
                    .map_err(refused)?
                    .into_inner();
                json::print(&json::Run::new(&run, true));
            }
            Ok(code)
        }
    })
}

pub fn rerun(args: RerunArgs) -> u8 {
    let console = Console::new(args.no_colour);
    let (run, from_failed, wait) = (args.run.clone(), args.from_failed, args.wait);
    with_client(&args.remote, |mut client| {
        let (run, remote) = (run.clone(), args.remote.clone());
        async move {
            let submitted = client
                .rerun_run(pb::RerunRunRequest {
                    run_id: run,
                    from_failed,
                })
                .await
                .map_err(refused)?
                .into_inner();
            started(&mut client, &remote, &submitted.run_id, wait, console).await
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
        heartbeat_interval: args
            .heartbeat_interval
            .and_then(|d| prost_types::Duration::try_from(d).ok()),
        no_redact: args.job.no_redact,
        parallel: args.job.parallel.unwrap_or(0),
        // Factotum Server's fields: only its HTTP API sets them.
        ..Default::default()
    })
}

/// A run just started: print its reference, or (`--wait`) follow it to its end.
async fn started(
    client: &mut Client,
    remote: &Remote,
    run_id: &str,
    wait: bool,
    console: Console,
) -> Result<u8, Failure> {
    if !wait {
        outln!("{run_id}");
        return Ok(exit::OK);
    }
    follow(client, remote, run_id, console, true).await
}

pub fn watch(args: RunRef) -> u8 {
    let console = Console::new(args.no_colour);
    let run = args.run.clone();
    with_client(&args.remote, |mut client| {
        let (run, remote) = (run.clone(), args.remote.clone());
        async move { follow(&mut client, &remote, &run, console, false).await }
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
                // One line, exit 4: nothing was cancelled (a script learns the run had ended).
                Err(s) if reason_of(&s).as_deref() == Some("RUN_FINISHED") => {
                    return Err(Failure {
                        message: format!("Error: {}: there is nothing to cancel", s.message()),
                        ..refused(s)
                    })
                }
                Err(s) => return Err(refused(s)),
            }
            Ok(exit::OK)
        }
    })
}
