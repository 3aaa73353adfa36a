//! The client commands that show what a coordinator knows: `status`, `runs`, `agents`.
//! Times print as RFC 3339 with milliseconds, durations in the console's format (`4.6s`,
//! `2m, 3s`), states by name; with `-o json`, the documents of [`crate::json`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use factotum_common::format::{human, timestamp};
use factotum_coordinator::wire::jobs as wire;
use factotum_proto::jobs as pb;

use crate::cli::{AgentsArgs, RunsArgs, StatusArgs};
use crate::connect::{refused, with_client};
use crate::exit;
use crate::json;
use crate::load::Failure;
use crate::out::{out, outln};

fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(wire::from_timestamp)
        .map(timestamp)
        .unwrap_or_default()
}

fn duration(d: Option<&prost_types::Duration>) -> String {
    d.map(|d| human(wire::from_duration(d))).unwrap_or_default()
}

fn task_state(s: i32) -> &'static str {
    wire::task_state_from_pb(s).map_or("UNKNOWN", |s| s.as_str())
}

/// Who cancelled a run and why, in one phrase: `job cancelled: maintenance (by alice)`.
fn cancelled(r: &pb::Run) -> Option<String> {
    if r.state != pb::RunState::Cancelled as i32 && r.cancel_reason.is_empty() {
        return None;
    }
    let why = if r.cancel_reason.is_empty() {
        "job cancelled"
    } else {
        &r.cancel_reason
    };
    Some(if r.cancelled_by.is_empty() {
        why.to_string()
    } else {
        format!("{why} (by {})", r.cancelled_by)
    })
}

/// What a listing says besides the state: who cancelled it and why, or why it waits.
fn note(r: &pb::Run) -> String {
    match cancelled(r) {
        Some(c) => c,
        None if json::active(r) && !r.waiting_reason.is_empty() => {
            format!("waiting: {}", r.waiting_reason)
        }
        None => String::new(),
    }
}

pub fn status(args: StatusArgs) -> u8 {
    let run = args.run.run.clone();
    let as_json = args.output.json();
    with_client(&args.run.remote, |mut client| {
        let run = run.clone();
        async move {
            let s = client
                .get_run(pb::GetRunRequest { run_id: run })
                .await
                .map_err(refused)?
                .into_inner();
            if as_json {
                json::print(&json::Run::new(&s, true));
                return Ok(exit::OK);
            }
            outln!("run       {}", s.run_id);
            outln!("job       {} ({})", s.job_name, s.job_reference);
            outln!("state     {}", wire::run_state_name(s.state));
            outln!("started   {}", time(s.start_time.as_ref()));
            outln!("duration  {}", duration(s.duration.as_ref()));
            if let Some(c) = cancelled(&s) {
                outln!("cancelled {c}");
            }
            if !s.rerun_of.is_empty() {
                outln!("rerun of  {}", s.rerun_of);
            }
            if !s.tags.is_empty() {
                let mut tags: Vec<String> =
                    s.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                tags.sort();
                outln!("tags      {}", tags.join(", "));
            }
            // A finished run may still carry the last reason it waited: not worth showing.
            if json::active(&s) && !s.waiting_reason.is_empty() {
                outln!("waiting   {}", s.waiting_reason);
            }
            outln!();
            let rows: Vec<[String; 7]> = s
                .tasks
                .iter()
                .map(|t| {
                    [
                        t.name.clone(),
                        task_state(t.state).to_string(),
                        if t.attempt > 1 {
                            t.attempt.to_string()
                        } else {
                            String::new()
                        },
                        t.agent.clone(),
                        duration(t.duration.as_ref()),
                        t.return_code.map(|c| c.to_string()).unwrap_or_default(),
                        t.error_message.clone(),
                    ]
                })
                .collect();
            out!(
                "{}",
                table(
                    ["TASK", "STATE", "ATTEMPT", "AGENT", "TOOK", "CODE", "REASON"],
                    &rows
                )
            );
            Ok(exit::OK)
        }
    })
}

/// `--since`: an RFC 3339 time, or a duration back from now.
fn since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, Failure> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let back = humantime::parse_duration(text).map_err(|_| {
        Failure::args(format!(
            "Error: --since '{text}' is neither a time like 2026-11-30T08:00:00Z nor a duration like 2h or 1d"
        ))
    })?;
    Ok(now - chrono::Duration::from_std(back).unwrap_or(chrono::Duration::MAX))
}

/// The request for the first page of `runs`.
fn list_request(args: &RunsArgs, now: DateTime<Utc>) -> Result<pb::ListRunsRequest, Failure> {
    let states = args
        .state
        .iter()
        .filter_map(|s| pb::RunState::from_str_name(&format!("RUN_STATE_{s}")))
        .map(|s| s as i32)
        .collect();
    Ok(pb::ListRunsRequest {
        page_size: args.limit.min(jobs_page_max()),
        page_token: String::new(),
        job_name: args.job.clone().unwrap_or_default(),
        states,
        tags: Default::default(),
        started_after: args
            .since
            .as_deref()
            .map(|s| since(s, now).map(wire::timestamp))
            .transpose()?,
        started_before: None,
    })
}

/// The largest page a coordinator gives.
fn jobs_page_max() -> u32 {
    factotum_coordinator::api::jobs::MAX_PAGE as u32
}

pub fn runs(args: RunsArgs) -> u8 {
    let first = match list_request(&args, Utc::now()) {
        Ok(r) => r,
        Err(f) => {
            crate::out::errln!("{}", f.message);
            return f.code;
        }
    };
    let limit = args.limit as usize;
    let as_json = args.output.json();
    with_client(&args.remote, |mut client| {
        let mut request = first.clone();
        async move {
            let mut runs = Vec::new();
            loop {
                let page = client
                    .list_runs(request.clone())
                    .await
                    .map_err(refused)?
                    .into_inner();
                runs.extend(page.runs);
                if page.next_page_token.is_empty() || runs.len() >= limit {
                    break;
                }
                request.page_token = page.next_page_token;
            }
            runs.truncate(limit);
            if as_json {
                let list: Vec<json::Run> = runs.iter().map(|r| json::Run::new(r, false)).collect();
                json::print(&list);
                return Ok(exit::OK);
            }
            let rows: Vec<[String; 7]> = runs
                .iter()
                .map(|r| {
                    [
                        r.run_id.clone(),
                        r.job_name.clone(),
                        wire::run_state_name(r.state).to_string(),
                        format!("{}/{}", r.tasks_done, r.task_count),
                        time(r.start_time.as_ref()),
                        duration(r.duration.as_ref()),
                        note(r),
                    ]
                })
                .collect();
            out!(
                "{}",
                table(
                    [
                        "RUN",
                        "JOB",
                        "STATE",
                        "TASKS DONE",
                        "STARTED",
                        "DURATION",
                        "NOTE"
                    ],
                    &rows
                )
            );
            Ok(exit::OK)
        }
    })
}

pub fn agents(args: AgentsArgs) -> u8 {
    let as_json = args.output.json();
    with_client(&args.remote, |mut client| async move {
        let list = client
            .list_agents(pb::ListAgentsRequest {})
            .await
            .map_err(refused)?
            .into_inner();
        if as_json {
            let list: Vec<json::Agent> = list.agents.iter().map(json::Agent::new).collect();
            json::print(&list);
            return Ok(exit::OK);
        }
        let now = Utc::now();
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
                let heard = a
                    .last_heard
                    .as_ref()
                    .and_then(wire::from_timestamp)
                    .and_then(|t| (now - t).to_std().ok())
                    .unwrap_or(Duration::ZERO);
                [
                    a.agent_id.clone(),
                    a.hostname.clone(),
                    a.ips.join(" "),
                    labels.join(","),
                    slots,
                    format!("{} ago", human(heard)),
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
pub(crate) fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_a_duration_back() {
        let now = DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            since("2026-11-30T08:00:00Z", now).unwrap(),
            now - chrono::Duration::hours(4)
        );
        assert_eq!(since("2h", now).unwrap(), now - chrono::Duration::hours(2));
        assert_eq!(since("1d", now).unwrap(), now - chrono::Duration::days(1));
        assert_eq!(
            since("yesterday", now).unwrap_err().code,
            exit::BAD_ARGUMENTS
        );
    }
}
