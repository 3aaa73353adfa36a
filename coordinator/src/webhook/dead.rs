//! Dead letters and disabled endpoints: what delivery gave up on, kept in the store so any
//! leader can list it, replay it or enable the endpoint again.
//!
//! A dead letter is a small record at `deadletter/<run>/<seq>/<i>` beside the event's outbox
//! entry `outbox/<run>/<seq>/<i>`, which keeps the body (so nothing is copied; a new leader
//! does not send an outbox entry that has a dead letter). At most `--webhook-dead-letters` are
//! kept: past it the oldest goes, with its body. A disabled endpoint is a record at
//! `webhooks/disabled/<hex of its URL>`.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{keys, StoreOp};

/// Why an event was given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// The receiver refused it (a 4xx other than 408, 410 and 429).
    Refused,
    /// Retried past `--webhook-retry-for`.
    Expired,
    /// Its endpoint answered 410 Gone and is disabled.
    Disabled,
    /// Over 1 MiB even with empty output tails.
    TooLarge,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Refused => "refused",
            Why::Expired => "expired",
            Why::Disabled => "disabled",
            Why::TooLarge => "too_large",
        }
    }
}

/// One dead letter (the body stays in the outbox entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub url: String,
    pub run: String,
    pub seq: u64,
    /// The event's transition time (ms): its retry horizon and its `ttm`.
    pub ttm: i64,
    pub why: Why,
    pub error: String,
    pub attempts: u32,
    pub at: DateTime<Utc>,
}

/// `deadletter/…` for an outbox key `outbox/…`.
pub fn key_for(outbox_key: &str) -> String {
    format!(
        "deadletter/{}",
        outbox_key.strip_prefix("outbox/").unwrap_or(outbox_key)
    )
}

/// `outbox/…` for a dead letter's key.
pub fn outbox_key_of(dead_key: &str) -> String {
    format!(
        "outbox/{}",
        dead_key.strip_prefix("deadletter/").unwrap_or(dead_key)
    )
}

/// The record of an endpoint disabled by a 410.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disabled {
    pub url: String,
    pub since: DateTime<Utc>,
    pub error: String,
}

pub fn disabled_key(url: &str) -> String {
    let hex: String = url.bytes().map(|b| format!("{b:02x}")).collect();
    format!("webhooks/disabled/{hex}")
}

pub fn disabled_prefix() -> &'static str {
    "webhooks/disabled/"
}

/// The dead letters the store holds, by key, and the endpoints disabled.
#[derive(Debug, Default)]
pub struct Ledger {
    dead: BTreeMap<String, DeadLetter>,
    disabled: HashMap<String, Disabled>,
    max: usize,
}

impl Ledger {
    pub fn new(max: usize) -> Ledger {
        Ledger {
            max: max.max(1),
            ..Ledger::default()
        }
    }

    /// Records a dead letter; returns the store writes (its record, and the deletes of the
    /// oldest past the bound, bodies included).
    pub fn add(&mut self, key: String, letter: DeadLetter) -> Vec<StoreOp> {
        let mut ops = vec![StoreOp::Put {
            key: key.clone(),
            value: serde_json::to_vec(&letter).unwrap_or_default(),
        }];
        self.dead.insert(key, letter);
        while self.dead.len() > self.max {
            let Some(oldest) = (self.dead.iter())
                .min_by_key(|(k, d)| (d.at, (*k).clone()))
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.dead.remove(&oldest);
            ops.push(StoreOp::Delete {
                key: outbox_key_of(&oldest),
            });
            ops.push(StoreOp::Delete { key: oldest });
        }
        ops
    }

    /// A dead letter read back from the store (a new leader).
    pub fn restore(&mut self, key: String, letter: DeadLetter) {
        self.dead.insert(key, letter);
    }

    pub fn is_dead(&self, outbox_key: &str) -> bool {
        self.dead.contains_key(&key_for(outbox_key))
    }

    /// A run's dead letters with `seq >= from` (and for `url` when given), in order.
    pub fn of_run(&self, run: &str, from: u64, url: Option<&str>) -> Vec<(String, DeadLetter)> {
        let prefix = format!("deadletter/{run}/");
        let mut out: Vec<(String, DeadLetter)> = (self.dead.range(prefix.clone()..))
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(_, d)| d.seq >= from && url.is_none_or(|u| d.url == u))
            .map(|(k, d)| (k.clone(), d.clone()))
            .collect();
        out.sort_by(|a, b| (a.1.seq, &a.0).cmp(&(b.1.seq, &b.0)));
        out
    }

    /// Forgets the dead letters of runs deleted from the store (their records go with the
    /// runs: see the engine's history).
    pub fn forget_runs(&mut self, runs: &[std::sync::Arc<str>]) {
        for run in runs {
            let prefix = format!("deadletter/{run}/");
            self.dead.retain(|k, _| !k.starts_with(&prefix));
        }
    }

    /// Forgets dead letters being replayed; returns the deletes of their records.
    pub fn take(&mut self, keys: &[String]) -> Vec<StoreOp> {
        (keys.iter())
            .filter(|k| self.dead.remove(*k).is_some())
            .map(|k| StoreOp::Delete { key: k.clone() })
            .collect()
    }

    pub fn all(&self) -> impl Iterator<Item = &DeadLetter> {
        self.dead.values()
    }

    pub fn count(&self) -> usize {
        self.dead.len()
    }

    pub fn disable(&mut self, d: Disabled) -> StoreOp {
        let op = StoreOp::Put {
            key: disabled_key(&d.url),
            value: serde_json::to_vec(&d).unwrap_or_default(),
        };
        self.disabled.insert(d.url.clone(), d);
        op
    }

    pub fn restore_disabled(&mut self, d: Disabled) {
        self.disabled.insert(d.url.clone(), d);
    }

    /// Enables an endpoint again; `None` when it was not disabled.
    pub fn enable(&mut self, url: &str) -> Option<StoreOp> {
        self.disabled.remove(url).map(|_| StoreOp::Delete {
            key: disabled_key(url),
        })
    }

    pub fn disabled(&self, url: &str) -> Option<&Disabled> {
        self.disabled.get(url)
    }

    pub fn all_disabled(&self) -> impl Iterator<Item = &Disabled> {
        self.disabled.values()
    }
}

// The outbox key of an event for one of a run's URLs (kept here beside its dead twin).
pub fn outbox_key(run: &str, seq: u64, url_index: usize) -> String {
    format!("{}/{url_index}", keys::outbox(run, seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn letter(run: &str, seq: u64, url: &str, at: i64) -> DeadLetter {
        DeadLetter {
            url: url.into(),
            run: run.into(),
            seq,
            ttm: 0,
            why: Why::Refused,
            error: "HTTP 400 Bad Request".into(),
            attempts: 1,
            at: Utc.timestamp_opt(at, 0).unwrap(),
        }
    }

    #[test]
    fn keys_mirror_the_outbox() {
        let k = outbox_key("r1", 7, 1);
        assert_eq!(k, "outbox/r1/000000000007/1");
        assert_eq!(key_for(&k), "deadletter/r1/000000000007/1");
        assert_eq!(outbox_key_of(&key_for(&k)), k);
    }

    #[test]
    fn a_deleted_runs_dead_letters_are_forgotten_and_no_other() {
        let mut l = Ledger::new(10);
        l.add(key_for(&outbox_key("a", 0, 0)), letter("a", 0, "u", 1));
        l.add(key_for(&outbox_key("ab", 0, 0)), letter("ab", 0, "u", 2));
        l.forget_runs(&[std::sync::Arc::from("a")]);
        assert!(l.of_run("a", 0, None).is_empty());
        assert_eq!(
            l.of_run("ab", 0, None).len(),
            1,
            "a prefix of a run id is not that run"
        );
        assert_eq!(l.count(), 1);
    }

    #[test]
    fn the_oldest_go_first_past_the_bound_with_their_bodies() {
        let mut l = Ledger::new(2);
        l.add(key_for(&outbox_key("a", 0, 0)), letter("a", 0, "u", 10));
        l.add(key_for(&outbox_key("b", 0, 0)), letter("b", 0, "u", 5));
        let ops = l.add(key_for(&outbox_key("a", 1, 0)), letter("a", 1, "u", 20));
        assert_eq!(l.count(), 2);
        let deleted: Vec<String> = (ops.iter())
            .filter_map(|o| match o {
                StoreOp::Delete { key } => Some(key.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            deleted,
            ["outbox/b/000000000000/0", "deadletter/b/000000000000/0"]
        );
        assert!(l.is_dead(&outbox_key("a", 1, 0)));
        assert!(!l.is_dead(&outbox_key("b", 0, 0)));
    }

    #[test]
    fn a_runs_letters_in_order_from_a_sequence_and_for_a_url() {
        let mut l = Ledger::new(100);
        for (seq, url) in [(3, "u1"), (1, "u1"), (2, "u2"), (12, "u1")] {
            l.add(key_for(&outbox_key("r", seq, 0)), letter("r", seq, url, 1));
        }
        l.add(key_for(&outbox_key("rr", 1, 0)), letter("rr", 1, "u1", 1));
        let seqs = |v: Vec<(String, DeadLetter)>| v.iter().map(|(_, d)| d.seq).collect::<Vec<_>>();
        assert_eq!(seqs(l.of_run("r", 0, None)), [1, 2, 3, 12]);
        assert_eq!(seqs(l.of_run("r", 2, Some("u1"))), [3, 12]);
        let keys: Vec<String> = l.of_run("r", 0, None).into_iter().map(|(k, _)| k).collect();
        assert_eq!(l.take(&keys).len(), 4);
        assert_eq!(l.count(), 1);
    }
}
