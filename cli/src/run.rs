//! The `run`, `validate` and `dot` commands.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use factotum_agent::{run_session, AgentConfig, Link};
use factotum_common::dag::Plan;
use factotum_common::run::JobState;
use factotum_common::tags::parse_tags;
use factotum_coordinator::{Engine, EngineConfig, MemoryStore, RunSpec, WatchEvent};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::cli::{DotArgs, RunArgs, ValidateArgs};
use crate::console::{command_table, Console};
use crate::exit;
use crate::load::{self, Failure};

/// Prints a failure and returns its exit code.
fn fail(f: Failure) -> u8 {
    eprintln!("{}", f.message);
    f.code
}

pub fn validate(args: ValidateArgs) -> u8 {
    let env = match load::parse_env(args.env.as_deref()) {
        Ok(e) => e,
        Err(f) => return fail(f),
    };
    match load::factfile(&args.factfile, &env, &BTreeMap::new()) {
        Ok(ff) => {
            // Planning cannot fail on a valid factfile; doing it proves the graph is runnable.
            let _plan = Plan::new(&ff);
            println!("'{}' is a valid Factfile!", args.factfile.display());
            exit::OK
        }
        Err(f) => fail(f),
    }
}

pub fn dot(args: DotArgs) -> u8 {
    // Every `dot` failure is exit 3, as Factotum's.
    let ff = match load::factfile(&args.factfile, &serde_json::Value::Null, &BTreeMap::new()) {
        Ok(ff) => ff,
        Err(f) => return fail(Failure::args(f.message)),
    };
    let plan = match &args.start {
        Some(start) => match Plan::from_start(&ff, start) {
            Ok(p) => p,
            Err(e) => return fail(Failure::args(e.to_string())),
        },
        None => Plan::new(&ff),
    };
    let text = factotum_common::dot::render(&plan);
    let Some(path) = args.output else {
        print!("{text}");
        let _ = std::io::stdout().flush();
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
            println!("File written successfully");
            exit::OK
        }
        Err(e) => fail(Failure::args(format!(
            "Error: couldn't create file '{}' ({e})",
            path.display()
        ))),
    }
}

pub fn run(args: RunArgs) -> u8 {
    let console = Console::new(args.no_colour);
    match prepare(&args, &console) {
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
            rt.block_on(execute(job, &args, console))
        }
        Ok(None) => exit::OK,
        Err(f) => fail(f),
    }
}

/// Everything checked before anything runs. `None`: nothing to run (a host constraint did not match).
fn prepare(args: &RunArgs, console: &Console) -> Result<Option<RunSpec>, Failure> {
    let env = load::parse_env(args.env.as_deref())?;
    for url in &args.webhook {
        check_url(url)?;
    }
    if args.dry_run && !args.webhook.is_empty() {
        return Err(Failure::args(
            "Error: --webhook cannot be used with the --dry-run option",
        ));
    }
    let tags = parse_tags(args.tag.iter().map(String::as_str));
    let ff = load::factfile(&args.factfile, &env, &tags)?;
    let plan = match &args.start {
        Some(start) => Plan::from_start(&ff, start).map_err(|e| Failure::args(e.to_string()))?,
        None => Plan::new(&ff),
    };
    let mut me = None;
    for c in &args.constraint {
        let (key, value) = c.split_once(',').unwrap_or((c.as_str(), ""));
        let (key, value) = (key.trim(), value.trim());
        if key != "host" {
            return Err(Failure::args(format!(
                "Error: unknown constraint \"{key}\": a local run accepts only host,<value>"
            )));
        }
        let me = me.get_or_insert_with(crate::host::identity);
        if let Err(why) = crate::host::check_host(value, me) {
            console.warn(&format!(
                "the specifed host constraint \"{value}\" did not match, no tasks have been executed. Reason: {why}"
            ));
            return Ok(None);
        }
    }
    if args.dry_run {
        let rows: Vec<(String, String)> = plan
            .order
            .iter()
            .map(|&t| {
                let task = &plan.tasks[t as usize];
                (task.name.to_string(), task.command_line.clone())
            })
            .collect();
        print!("{}", command_table(&rows));
    }
    Ok(Some(RunSpec {
        compact_factfile: ff.compact_json(),
        plan: Arc::new(plan),
        tags,
        webhooks: args.webhook.clone(),
        max_output: args.max_stdouterr_size,
        dry_run: args.dry_run,
        uuid: uuid_v4(),
    }))
}

fn check_url(url: &str) -> Result<(), Failure> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let reason = match rest {
        None => Some("the URL must start with http:// or https://"),
        Some(r) if r.is_empty() || r.starts_with('/') => Some("the URL has no host"),
        Some(r) if r.chars().any(char::is_whitespace) => Some("the URL contains whitespace"),
        Some(_) => None,
    };
    match reason {
        Some(why) => Err(Failure::args(format!(
            "Error: the specifed webhook URL \"{url}\" is invalid. Reason: {why}"
        ))),
        None => Ok(()),
    }
}

fn uuid_v4() -> String {
    factotum_coordinator::new_uuid()
}

/// Runs the job on the embedded engine with one in-process agent; returns the exit code.
async fn execute(spec: RunSpec, args: &RunArgs, console: Console) -> u8 {
    let shutdown = CancellationToken::new();
    let config = EngineConfig {
        heartbeat_interval: args.heartbeat_interval.map(Duration::from_secs_f64),
        kill_grace: Duration::from_secs_f64(args.kill_grace),
        ..EngineConfig::default()
    };
    let engine = Engine::start(config, MemoryStore::new(), shutdown.clone());

    // The in-process agent: the same session protocol as a remote agent, over channels.
    let (agent_tx, agent_rx) = tokio::sync::mpsc::channel(4096);
    let (coord_tx, coord_rx) = tokio::sync::mpsc::channel(4096);
    engine.attach_agent(agent_rx, coord_tx);
    let me = crate::host::identity();
    let agent_cfg = AgentConfig {
        agent_id: "local".into(),
        hostname: me.hostname.clone(),
        ips: me.ips.iter().map(|i| i.to_string()).collect(),
        labels: Default::default(),
        slots: 0,
        kill_grace: Duration::from_secs_f64(args.kill_grace),
    };
    let agent_stop = CancellationToken::new();
    let agent = {
        let stop = agent_stop.clone();
        tokio::spawn(async move {
            let _ = run_session(
                &agent_cfg,
                Link {
                    tx: agent_tx,
                    rx: coord_rx,
                },
                stop,
            )
            .await;
        })
    };

    let submitted = match engine.submit(spec).await {
        Ok(s) => s,
        Err(e) => {
            console.error(&format!("could not start the run: {e}"));
            return exit::TASK_FAILED;
        }
    };
    let run_id = submitted.run_id.clone();
    let mut watch = submitted.watch;
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
                Some(WatchEvent::Tasks(changes)) => { console.task_changes(&changes); continue; }
                Some(WatchEvent::Output { task, stream, line }) => { console.output(&task, stream, &line); continue; }
                Some(WatchEvent::Job { .. }) => continue,
                Some(WatchEvent::Done(summary)) => {
                    console.summary(&summary);
                    outcome = summary.state;
                    break;
                }
                None => break,
            },
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
    agent_stop.cancel();
    let _ = agent.await;
    let timeout = Duration::from_secs_f64(args.webhook_timeout);
    for u in engine.flush_webhooks(timeout).await {
        console.warn(&format!(
            "{} webhook payload(s) for run {} were not delivered to {}{}",
            u.pending,
            u.run_id,
            u.url,
            u.last_error
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        ));
    }
    shutdown.cancel();
    if outcome == JobState::Succeeded {
        exit::OK
    } else {
        exit::TASK_FAILED
    }
}
