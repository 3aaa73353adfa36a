//! `factotum webhooks`: what a coordinator's webhook delivery holds (endpoints, dead letters),
//! and the two things an operator does about it (replay a run's dead letters, enable an
//! endpoint that answered 410 Gone).

use factotum_common::format::timestamp;
use factotum_coordinator::wire::jobs as wire;
use factotum_proto::jobs as pb;
use serde::Serialize;

use crate::cli::{WebhooksCommand, WebhooksEnableArgs, WebhooksListArgs, WebhooksReplayArgs};
use crate::connect::{refused, with_client};
use crate::exit;
use crate::json;
use crate::out::outln;
use crate::show::table;

pub fn command(c: WebhooksCommand) -> u8 {
    match c {
        WebhooksCommand::List(a) => list(a),
        WebhooksCommand::Replay(a) => replay(a),
        WebhooksCommand::Enable(a) => enable(a),
    }
}

fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(wire::from_timestamp)
        .map(timestamp)
        .unwrap_or_default()
}

/// `-o json`: the endpoints and the dead letters as listed.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Listing {
    endpoints: Vec<Endpoint>,
    dead_letters: Vec<Dead>,
    dead_letters_total: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Endpoint {
    url: String,
    state: &'static str,
    disabled_since: Option<String>,
    filter: String,
    signed: bool,
    pending: u64,
    dead_lettered: u64,
    last_error: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Dead {
    run_id: String,
    sequence: u64,
    url: String,
    event_id: String,
    reason: String,
    error: String,
    attempts: u32,
    dead_at: String,
    transition_time: String,
}

fn listing(r: &pb::ListWebhooksResponse) -> Listing {
    Listing {
        endpoints: (r.endpoints.iter())
            .map(|e| Endpoint {
                url: e.url.clone(),
                state: if e.disabled { "disabled" } else { "active" },
                disabled_since: e.disabled_since.as_ref().map(|t| time(Some(t))),
                filter: e.filter.clone(),
                signed: e.signed,
                pending: e.pending,
                dead_lettered: e.dead_lettered,
                last_error: Some(e.last_error.clone()).filter(|e| !e.is_empty()),
            })
            .collect(),
        dead_letters: (r.dead_letters.iter())
            .map(|d| Dead {
                run_id: d.run_id.clone(),
                sequence: d.sequence,
                url: d.url.clone(),
                event_id: d.event_id.clone(),
                reason: d.reason.clone(),
                error: d.error.clone(),
                attempts: d.attempts,
                dead_at: time(d.dead_at.as_ref()),
                transition_time: time(d.transition_time.as_ref()),
            })
            .collect(),
        dead_letters_total: r.dead_letters_total,
    }
}

fn list(args: WebhooksListArgs) -> u8 {
    let as_json = args.output.json();
    with_client(&args.remote, |mut client| async move {
        let r = (client.list_webhooks(pb::ListWebhooksRequest {}).await)
            .map_err(refused)?
            .into_inner();
        let l = listing(&r);
        if as_json {
            json::print(&l);
            return Ok(exit::OK);
        }
        if l.endpoints.is_empty() {
            outln!("No webhook endpoints.");
            return Ok(exit::OK);
        }
        let rows: Vec<[String; 7]> = (l.endpoints.iter())
            .map(|e| {
                let state = match &e.disabled_since {
                    Some(since) => format!("disabled since {since}"),
                    None => e.state.to_string(),
                };
                [
                    e.url.clone(),
                    state,
                    e.filter.clone(),
                    if e.signed { "yes" } else { "no" }.into(),
                    e.pending.to_string(),
                    e.dead_lettered.to_string(),
                    e.last_error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        let header = [
            "URL",
            "STATE",
            "FILTER",
            "SIGNED",
            "PENDING",
            "DEAD",
            "LAST ERROR",
        ];
        crate::out::out!("{}", table(header, &rows));
        if l.dead_letters.is_empty() {
            return Ok(exit::OK);
        }
        outln!();
        let shown = l.dead_letters.len() as u64;
        let more = match l.dead_letters_total > shown {
            true => format!(", the newest {shown} shown"),
            false => String::new(),
        };
        outln!("Dead letters: {}{more}", l.dead_letters_total);
        let rows: Vec<[String; 6]> = (l.dead_letters.iter())
            .map(|d| {
                [
                    d.run_id.clone(),
                    d.sequence.to_string(),
                    d.url.clone(),
                    d.reason.clone(),
                    d.dead_at.clone(),
                    d.error.clone(),
                ]
            })
            .collect();
        let header = ["RUN", "SEQ", "URL", "REASON", "DEAD AT", "ERROR"];
        crate::out::out!("{}", table(header, &rows));
        Ok(exit::OK)
    })
}

fn replay(args: WebhooksReplayArgs) -> u8 {
    with_client(&args.remote, |mut client| {
        let req = pb::ReplayWebhooksRequest {
            run_id: args.run.clone(),
            from_sequence: args.from,
            url: args.url.clone().unwrap_or_default(),
        };
        let run = args.run.clone();
        async move {
            let r = client
                .replay_webhooks(req)
                .await
                .map_err(refused)?
                .into_inner();
            match (r.replayed, r.skipped) {
                (0, 0) => outln!("Nothing to replay: run {run} has no dead letters matching."),
                (n, 0) => outln!("Replaying {n} event(s) of run {run}."),
                (n, k) => outln!(
                    "Replaying {n} event(s) of run {run}; {k} dead letter(s) had no body to send (too large) and stay."
                ),
            }
            Ok(exit::OK)
        }
    })
}

fn enable(args: WebhooksEnableArgs) -> u8 {
    with_client(&args.remote, |mut client| {
        let req = pb::EnableWebhookRequest {
            url: args.url.clone(),
        };
        let url = args.url.clone();
        async move {
            client.enable_webhook(req).await.map_err(refused)?;
            outln!("Enabled {url}.");
            Ok(exit::OK)
        }
    })
}
