//! The `run`, `validate` and `dot` commands.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use factotum_agent::{run_session, AgentConfig, Link};
use factotum_common::constraint::{self, Constraint, Identity};
use factotum_common::dag::Plan;
use factotum_common::redact::Redactor;
use factotum_common::run::JobState;
use factotum_common::tags::parse_tags;
use factotum_common::Factfile;
use factotum_coordinator::spec;
use factotum_coordinator::webhook::endpoint::Endpoints;
use factotum_coordinator::webhook::DeliveryConfig;
use factotum_coordinator::{
    Engine, EngineConfig, NoStore, Placement, RunSpec, Submission, WatchEvent,
};
use factotum_service::Lifecycle;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{DotArgs, RunArgs, ValidateArgs};
use crate::console::{command_table, Console};
use crate::exit;
use crate::json;
use crate::load::{self, Failure};
use crate::out::{errln, out, outln};
use crate::progress::{self, Progress};

/// Prints a failure and returns its exit code.
fn fail(f: Failure) -> u8 {
    errln!("{}", f.message);
    f.code
}

pub fn validate(args: ValidateArgs) -> u8 {
    let loaded = load::factfile(
        &args.factfile,
        args.env.as_deref(),
        &BTreeMap::new(),
        args.render.limits(),
        args.input.limits(),
    );
    if args.output.json() {
        return validate_json(&args, loaded);
    }
    match loaded {
        Ok(ff) => {
            // Planning cannot fail on a valid factfile; doing it proves the graph is runnable.
            let _plan = Plan::new(&ff);
            outln!("'{}' is a valid Factfile!", args.factfile.display());
            exit::OK
        }
        Err(f) => fail(f),
    }
}

/// `validate -o json`: the verdict on the factfile as one document (exit 0 or 1); a bad
/// argument (exit 3) is no verdict: its message goes to stderr, nothing to stdout.
fn validate_json(args: &ValidateArgs, loaded: Result<Factfile, Failure>) -> u8 {
    let factfile = args.factfile.display().to_string();
    match loaded {
        Ok(ff) => {
            let plan = Plan::new(&ff);
            json::print(&json::Validation {
                valid: true,
                factfile,
                job_name: Some(&ff.data.name),
                task_count: Some(plan.tasks.len()),
                errors: vec![],
            });
            exit::OK
        }
        Err(f) if f.code == exit::INVALID_FACTFILE => {
            json::print(&json::Validation {
                valid: false,
                factfile,
                job_name: None,
                task_count: None,
                errors: vec![&f.message],
            });
            f.code
        }
        Err(f) => fail(f),
    }
}

pub fn dot(args: DotArgs) -> u8 {
    // Every `dot` failure is exit 3, as Factotum's.
    let ff = match load::factfile(
        &args.factfile,
        None,
        &BTreeMap::new(),
        Default::default(),
        args.input.limits(),
    ) {
        Ok(ff) => ff,
        Err(f) => return fail(Failure::args(f.message)),
    };
    let plan = match Plan::from_starts(&ff, &args.start) {
        Ok(p) => p,
        Err(e) => return fail(Failure::args(e.to_string())),
    };
    let text = factotum_common::dot::render(&plan);
    let Some(path) = args.output else {
        out!("{text}");
        return exit::OK;
    };
    let mut open = std::fs::OpenOptions::new();
    open.write(true);
    if args.overwrite {
        open.create(true).truncate(true);
    } else {
        open.create_new(true);
    }
    match open
        .open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
    {
        Ok(()) => {
            outln!("File written successfully");
            exit::OK
        }
        Err(e) => fail(Failure::args(format!(
            "Error: couldn't create file '{}' ({e})",
            path.display()
        ))),
    }
}

pub fn run(args: RunArgs) -> u8 {
    let console = Console::new(args.job.no_colour);
    // Who this machine is: for the constraint checks and the in-process agent's hello.
    let me = factotum_agent::identity::local(Default::default());
    match prepare(&args, &console, &me) {
        Ok(Some(job)) => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    console.error(&format!("cannot start the runtime: {e}"));
                    return exit::TASK_FAILED;
                }
            };
            rt.block_on(execute(job, &args, console, me))
        }
        Ok(None) => exit::OK,
        Err(f) => fail(f),
    }
}

/// Everything checked before anything runs. `None`: nothing to run (a host constraint did not match).
fn prepare(args: &RunArgs, console: &Console, me: &Identity) -> Result<Option<RunSpec>, Failure> {
    let mut constraints = vec![];
    for raw in &args.job.constraint {
        match constraint::parse(raw) {
            Ok(c @ Constraint::Host { .. }) => constraints.push(c),
            Ok(_) => {
                return Err(Failure::args(format!(
                    "Error: a local run accepts only host,<value> constraints, not \"{raw}\""
                )))
            }
            Err(e) => return Err(Failure::args(format!("Error: {e}"))),
        }
    }
    let text = spec::read_factfile(&args.job.factfile, args.input.limits())?;
    let submission = Submission {
        factfile: text,
        factfile_name: args.job.factfile.display().to_string(),
        env: args.job.env.clone(),
        tags: parse_tags(args.job.tag.iter().map(String::as_str)),
        start: args.job.start.clone(),
        webhooks: args.job.webhook.clone(),
        constraints,
        placement: Some(Placement::Sticky),
        max_output: args.job.max_output(),
        dry_run: args.job.dry_run,
        allow_concurrent: true,
        idempotency_key: None,
        render_limits: args.render.limits(),
        max_message: 0,
        // The local engine's own heartbeat (EngineConfig::heartbeat_interval) sends them.
        heartbeat: None,
        no_redact: args.job.no_redact,
        parallel: args.job.parallel,
    };
    let mut run = spec::prepare_within(submission, args.input.limits())?;
    hold_to_headroom(&mut run, console);
    // Factotum's local constraint check: this machine must satisfy every host constraint.
    if !run.constraints.is_empty() {
        // Only host constraints get here (see above).
        if let Some(Constraint::Host { value, .. }) =
            run.constraints.iter().find(|c| !c.matches(me))
        {
            console.warn(&format!(
                "the specifed host constraint \"{value}\" did not match, no tasks have been executed. Reason: this host is '{}' with addresses [{}], and '{value}' is neither '*', that hostname, nor a name or address of one of those addresses",
                me.hostname,
                me.ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
            ));
            return Ok(None);
        }
    }
    // A local run has one place to run tasks: each task's own constraints must hold here.
    for t in &run.plan.tasks {
        if let Some(c) = t.policy().constraints.iter().find(|c| !c.matches(me)) {
            return Err(Failure::args(format!(
                "Error: the task '{}' may only run where {c} holds, which this machine ('{}') does not satisfy; `factotum run` runs every task here (submit the factfile to a coordinator to place it)",
                t.name, me.hostname
            )));
        }
    }
    if args.job.dry_run {
        let plan = &run.plan;
        let rows: Vec<(String, String)> = plan
            .order
            .iter()
            .map(|&t| {
                let task = &plan.tasks[t as usize];
                // Templated: it may hold a secret the task's output would not show.
                let secrets = task.policy().redact.as_deref().unwrap_or_default();
                let line = Redactor::new(secrets)
                    .redact(&task.command_line)
                    .into_owned();
                (task.name.to_string(), line)
            })
            .collect();
        out!("{}", command_table(&rows));
    }
    Ok(Some(run))
}

/// Runs the job on the embedded engine with one in-process agent; returns the exit code.
async fn execute(spec: RunSpec, args: &RunArgs, console: Console, me: Identity) -> u8 {
    let config = EngineConfig {
        heartbeat_interval: args.heartbeat_interval,
        delivery: DeliveryConfig {
            endpoints: Endpoints::new(args.signing.webhook_secret.clone(), &[]),
            ..DeliveryConfig::default()
        },
        // One run, watched from its submission and never listed: nothing kept for later.
        keep_finished: 0,
        late_watchers: false,
        ..EngineConfig::default()
    };
    let service = Lifecycle::new();
    let engine = Engine::start(config, NoStore, service.clone());

    // The in-process agent: the same session protocol as a remote agent, over channels. It is
    // tracked, so every way out below stops it and waits for it (its tasks killed, TERM then
    // KILL after --kill-grace) before the webhooks are flushed.
    let (agent_tx, agent_rx) = tokio::sync::mpsc::channel(4096);
    let (coord_tx, coord_rx) = tokio::sync::mpsc::channel(4096);
    engine.attach_agent(agent_rx, coord_tx);
    let agent_cfg = AgentConfig {
        agent_id: "local".into(),
        hostname: me.hostname.clone(),
        ips: me.ips.iter().map(|i| i.to_string()).collect(),
        labels: Default::default(),
        slots: 0,
        kill_grace: args.kill_grace,
        drain_grace: Duration::ZERO,
        state_dir: None,
        shim_exe: None,
        // The console is the stream: every line, as Factotum prints it.
        max_stream_rate: None,
    };
    let agent = Lifecycle::new();
    let stop = agent.token.clone();
    agent.spawn(async move {
        let link = Link {
            tx: agent_tx,
            rx: coord_rx,
        };
        let _ = run_session(&agent_cfg, link, stop).await;
    });

    let code = follow(&engine, spec, &console).await;

    if !agent.shut_down(args.kill_grace + AGENT_STOP_SLACK).await {
        console.warn("the local agent did not stop in time; its tasks may still be running");
    }
    for u in engine.flush_webhooks(args.webhook_timeout).await {
        let last = (u.last_error.as_ref())
            .map(|e| format!(" (last error: {e})"))
            .unwrap_or_default();
        if u.pending > 0 {
            console.warn(&format!(
                "{} webhook payload(s) for run {} were not delivered to {}{last}",
                u.pending, u.run_id, u.url,
            ));
        }
        if u.dead > 0 {
            console.warn(&format!(
                "{} webhook payload(s) for run {} were given up on for {}{last}",
                u.dead, u.run_id, u.url,
            ));
        }
    }
    if !service.shut_down(ENGINE_STOP).await {
        console.warn("the engine did not stop in time");
    }
    code
}

/// Never more tasks at once than the machine's process limits leave room for: a tighter
/// `maxParallel` for this run, said once when it binds (more tasks than that could be ready).
fn hold_to_headroom(run: &mut RunSpec, console: &Console) {
    let Some(room) = crate::headroom::task_limit() else {
        return;
    };
    let limit = run.plan.max_parallel.unwrap_or(u32::MAX);
    if room >= limit || (run.plan.tasks.len() as u64) <= u64::from(room) {
        return;
    }
    console.warn(&format!(
        "this machine's process limits leave room for {room} tasks at once: the job's other \
         ready tasks wait for a free place (--parallel sets a lower limit)"
    ));
    let mut plan = (*run.plan).clone();
    plan.max_parallel = Some(room);
    run.plan = std::sync::Arc::new(plan);
}

/// How long past `--kill-grace` the local agent gets to stop its tasks and report them.
const AGENT_STOP_SLACK: Duration = Duration::from_secs(5);

/// How long the engine gets to stop once the run is over and its webhooks flushed.
const ENGINE_STOP: Duration = Duration::from_secs(5);

/// Submits the run and prints its events until it ends; SIGINT/SIGTERM cancel it. Returns the
/// exit code.
async fn follow(engine: &Engine, spec: RunSpec, console: &Console) -> u8 {
    let plan = std::sync::Arc::clone(&spec.plan);
    let submitted = match engine.submit(spec).await {
        Ok(s) => s,
        Err(e) => {
            console.error(&format!("could not start the run: {e}"));
            return exit::TASK_FAILED;
        }
    };
    let run_id = submitted.run_id.clone();
    let mut watch = submitted.watch;
    // On a terminal only, on stderr only: stdout stays Factotum's bytes.
    let mut live = Progress::for_stderr();
    live.tasks(
        plan.tasks
            .iter()
            .map(|t| (&*t.name, factotum_common::run::TaskState::Waiting)),
    );
    let mut tick = tokio::time::interval(progress::TICK);
    let (mut sigint, mut sigterm) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        _ => {
            console.error("cannot install signal handlers");
            return exit::TASK_FAILED;
        }
    };
    let mut interrupted = false;
    let mut outcome = JobState::Failed;
    loop {
        let signal_name = tokio::select! {
            ev = watch.recv() => match ev {
                Some(WatchEvent::Tasks(changes)) => {
                    console.task_changes(&changes);
                    live.changes(&changes);
                    continue;
                }
                Some(WatchEvent::Output { task, stream, line, .. }) => { console.output(&task, stream, &line); continue; }
                Some(WatchEvent::Job { .. } | WatchEvent::Gap | WatchEvent::Snapshot(_)) => continue,
                Some(WatchEvent::Lagged { skipped }) => { console.lagged(skipped); continue; }
                Some(WatchEvent::Done(summary)) => {
                    live.finish();
                    console.summary(&summary);
                    outcome = summary.state;
                    break;
                }
                None => break,
            },
            _ = tick.tick() => { live.tick(); continue; }
            _ = sigint.recv() => "SIGINT",
            _ = sigterm.recv() => "SIGTERM",
        };
        if !interrupted {
            interrupted = true;
            console.warn(&format!(
                "received {signal_name}: stopping the running tasks"
            ));
            let _ = engine
                .cancel(
                    &run_id,
                    &format!("the job was interrupted by {signal_name}"),
                )
                .await;
        }
    }
    live.finish();
    if outcome == JobState::Succeeded {
        exit::OK
    } else {
        exit::TASK_FAILED
    }
}
