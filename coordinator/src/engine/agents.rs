//! The agents owner: who is connected on which session, which agent holds which attempt, who
//! has been silent too long, and which recorded attempts no agent has re-attached yet.
//!
//! Its verbs *return* what should happen (messages to send, attempts to fail); the interpreter
//! in [`super::core`] sends and applies them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use factotum_common::constraint::Identity;
use factotum_common::dag::TaskId;
use factotum_proto::{CoordinatorMessage, Hello, LeaseRef};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::model::AgentInfo;
use crate::persist::HolderRecord;
use crate::placement::Candidate;

/// One attempt: (run, task, attempt).
pub(super) type AttemptKey = (Arc<str>, TaskId, u32);

pub(super) fn key_of(r: &LeaseRef) -> AttemptKey {
    (Arc::from(r.run_id.as_str()), r.task, r.attempt)
}

pub(super) struct Agent {
    pub id: Arc<str>,
    hello: Hello,
    identity: Identity,
    /// `None` while disconnected (its attempts may still be re-attached).
    pub tx: Option<mpsc::Sender<CoordinatorMessage>>,
    conn: Option<u64>,
    in_use: u32,
    last_heard: Instant,
    /// Shutting down: takes no new leases.
    draining: bool,
}

/// What the engine knows of an attempt an agent says it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claim {
    /// The run's current attempt: re-attach it.
    Current,
    /// Current, but being stopped (timed out or cancelled while the agent was away): re-attach
    /// it and tell the agent (again) to stop it.
    Stopping,
    /// Not wanted any more: tell the agent to stop it.
    Stale,
}

/// What a `Hello` calls for.
#[derive(Debug, Default)]
pub(super) struct Welcomed {
    /// Attempts the agent should stop.
    pub cancels: Vec<LeaseRef>,
    /// Attempts this agent held that it no longer reports: gone with its restart.
    pub vanished: Vec<AttemptKey>,
    /// Attempts re-attached (their task's agent is this one again).
    pub attached: Vec<AttemptKey>,
    /// Attempts leased to this agent that it never received (the same process, or the same
    /// state directory, does not report them): to be leased to it again, as the same attempt.
    pub releases: Vec<AttemptKey>,
}

/// What a closed session calls for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Gone {
    /// Not the agent's current session (it reconnected since), or unknown: nothing.
    Nothing,
    /// It held no attempts: forgotten.
    Forgotten,
    /// It held attempts, and there is no liveness limit to wait on: lose it now.
    LoseNow(Arc<str>),
    /// It held attempts: they wait for it to come back (or for `lost_after`).
    Waiting,
}

#[derive(Default)]
pub(super) struct Agents {
    agents: HashMap<Arc<str>, Agent>,
    /// Which agent each live connection speaks for.
    conns: HashMap<u64, Arc<str>>,
    /// Which agent holds each live attempt.
    leases: HashMap<AttemptKey, Arc<str>>,
    /// Attempts recorded as running that no agent has re-attached yet: until when one may,
    /// and who they were leased to (when recorded).
    unclaimed: HashMap<AttemptKey, (Instant, Option<HolderRecord>)>,
}

/// A non-empty id equal to another: the same agent process, or the same state directory.
fn same(a: &str, b: &str) -> bool {
    !a.is_empty() && a == b
}

impl Agents {
    /// One live session per agent name: if `hello`'s name has a live session that this one
    /// may not take over, the host that session comes from. The same process reconnecting
    /// (same `instance_id`) or the agent restarted with its state (same `state_id`) takes
    /// over; an agent that does not say its instance (older than instance ids) does too.
    pub fn clash(&self, hello: &Hello) -> Option<&str> {
        let live = self.agents.get(hello.agent_id.as_str())?;
        if live.tx.as_ref().is_none_or(|tx| tx.is_closed()) || hello.instance_id.is_empty() {
            return None;
        }
        if same(&live.hello.instance_id, &hello.instance_id)
            || same(&live.hello.state_id, &hello.state_id)
        {
            return None;
        }
        Some(&live.hello.hostname)
    }

    /// Registers a session's `Hello`: the agent (again) with what it still runs. `claims` says,
    /// for each attempt it reports running, what the runs make of it.
    pub fn hello(
        &mut self,
        conn: u64,
        hello: Hello,
        tx: mpsc::Sender<CoordinatorMessage>,
        claims: &[Claim],
        now: Instant,
    ) -> Welcomed {
        let agent_id: Arc<str> = Arc::from(hello.agent_id.as_str());
        // Whether this Hello comes from the agent process that had the name before (or from
        // the same state directory): what it does not report, it never received.
        let mut same_process = false;
        if let Some(old) = self.agents.get(&agent_id) {
            same_process = same(&old.hello.instance_id, &hello.instance_id)
                || same(&old.hello.state_id, &hello.state_id);
            if let Some(conn) = old.conn {
                self.conns.remove(&conn); // the same agent on a new connection replaces the old one
            }
        }
        let reports = |key: &AttemptKey| {
            hello
                .running
                .iter()
                .chain(&hello.finished)
                .any(|r| *r.run_id == *key.0 && r.task == key.1 && r.attempt == key.2)
        };
        // Leased (per the record) to another agent: not this one's to re-attach or report.
        let elsewhere = |this: &Agents, key: &AttemptKey| -> Option<String> {
            if let Some(holder) = this.leases.get(key).filter(|h| ***h != *agent_id) {
                return Some(holder.to_string());
            }
            match this.unclaimed.get(key) {
                Some((_, Some(rec))) if rec.agent != *agent_id => Some(rec.agent.clone()),
                _ => None,
            }
        };
        let mut out = Welcomed::default();
        for (r, claim) in hello.running.iter().zip(claims) {
            let key = key_of(r);
            if let Some(holder) = elsewhere(self, &key) {
                tracing::warn!(agent = %agent_id, %holder, run = %r.run_id, task = r.task, attempt = r.attempt,
                    "agent {agent_id} reports an attempt leased to agent {holder}: ignored");
                continue;
            }
            if *claim != Claim::Current {
                out.cancels.push(r.clone());
            }
            if *claim != Claim::Stale {
                self.unclaimed.remove(&key);
                self.leases.insert(key.clone(), Arc::clone(&agent_id));
                out.attached.push(key);
            }
        }
        // Results of attempts a new leader waits for follow this Hello: this agent holds them
        // until they arrive.
        for r in &hello.finished {
            let key = key_of(r);
            if self.unclaimed.contains_key(&key) && elsewhere(self, &key).is_none() {
                self.unclaimed.remove(&key);
                self.leases.insert(key, Arc::clone(&agent_id));
            }
        }
        // Attempts of this agent that it no longer reports: never received by this same
        // process (leased again), or gone with its restart.
        for (key, holder) in &self.leases {
            if **holder == *agent_id && !reports(key) {
                match same_process {
                    true => out.releases.push(key.clone()),
                    false => out.vanished.push(key.clone()),
                }
            }
        }
        for key in &out.vanished {
            self.leases.remove(key);
        }
        // Attempts a new leader waits for, recorded as leased to this agent, that it does not
        // report: likewise. (An agent that does not say its instance may still re-attach
        // them in the failover grace, as before.)
        if !hello.instance_id.is_empty() {
            let mine: Vec<(AttemptKey, bool)> = self
                .unclaimed
                .iter()
                .filter_map(|(key, (_, rec))| {
                    let rec = rec.as_ref().filter(|r| r.agent == *agent_id)?;
                    let received_never = same(&rec.instance, &hello.instance_id)
                        || same(&rec.state, &hello.state_id);
                    (!reports(key)).then(|| (key.clone(), received_never))
                })
                .collect();
            for (key, received_never) in mine {
                self.unclaimed.remove(&key);
                if received_never {
                    self.leases.insert(key.clone(), Arc::clone(&agent_id));
                    out.releases.push(key);
                } else {
                    out.vanished.push(key);
                }
            }
        }
        // Slots in use: every attempt it holds, running or with a result on its way.
        let held = self.leases.values().filter(|a| **a == agent_id).count();
        let identity = Identity {
            hostname: hello.hostname.clone(),
            ips: hello.ips.iter().filter_map(|i| i.parse().ok()).collect(),
            labels: hello.labels.clone(),
        };
        self.conns.insert(conn, Arc::clone(&agent_id));
        self.agents.insert(
            Arc::clone(&agent_id),
            Agent {
                id: agent_id,
                hello,
                identity,
                tx: Some(tx),
                conn: Some(conn),
                in_use: u32::try_from(held).unwrap_or(u32::MAX),
                last_heard: now,
                draining: false,
            },
        );
        out
    }

    /// The agent a session speaks for, now heard from.
    pub fn heard(&mut self, conn: u64, now: Instant) -> Option<Arc<str>> {
        let id = self.conns.get(&conn)?;
        if let Some(agent) = self.agents.get_mut(id) {
            agent.last_heard = now;
        }
        Some(Arc::clone(id))
    }

    /// A session closed.
    pub fn gone(&mut self, conn: u64, waits_for_liveness: bool) -> Gone {
        let Some(agent_id) = self.conns.remove(&conn) else {
            return Gone::Nothing;
        };
        let Some(agent) = self.agents.get_mut(&agent_id) else {
            return Gone::Nothing;
        };
        if agent.conn != Some(conn) {
            return Gone::Nothing; // an older connection of an agent that has reconnected since
        }
        agent.tx = None;
        agent.conn = None;
        let running = self.leases.values().filter(|a| **a == agent_id).count();
        if running == 0 {
            tracing::info!(agent = %agent_id, "agent disconnected");
            self.agents.remove(&agent_id);
            Gone::Forgotten
        } else if !waits_for_liveness {
            Gone::LoseNow(agent_id)
        } else {
            tracing::warn!(agent = %agent_id, attempts = running, "agent disconnected with attempts running; waiting for it to come back");
            Gone::Waiting
        }
    }

    /// The agent says it drains (or no longer does).
    pub fn set_draining(&mut self, id: &str, draining: bool) {
        if let Some(agent) = self.agents.get_mut(id) {
            if draining && !agent.draining {
                tracing::info!(agent = %id, "agent draining: no new leases");
            }
            agent.draining = draining;
        }
    }

    /// An agent reported an attempt's end: if it held it, its slot is free again.
    pub fn ended(&mut self, agent_id: &Arc<str>, key: &AttemptKey) {
        if self.leases.get(key) == Some(agent_id) {
            self.leases.remove(key);
            if let Some(agent) = self.agents.get_mut(agent_id) {
                agent.in_use = agent.in_use.saturating_sub(1);
            }
        }
    }

    /// The attempt is leased to `agent` (a slot of it is taken).
    pub fn lease(&mut self, key: AttemptKey, agent: &Arc<str>) {
        if let Some(a) = self.agents.get_mut(agent) {
            a.in_use += 1;
        }
        self.leases.insert(key, Arc::clone(agent));
    }

    /// Forgets an attempt that ended without its agent (lost).
    pub fn release(&mut self, key: &AttemptKey) {
        self.leases.remove(key);
    }

    pub fn holder(&self, key: &AttemptKey) -> Option<&Arc<str>> {
        self.leases.get(key)
    }

    pub fn sender(&self, id: &str) -> Option<&mpsc::Sender<CoordinatorMessage>> {
        self.agents.get(id).and_then(|a| a.tx.as_ref())
    }

    /// Attempts recorded as running (loaded by a new leader) that an agent must re-attach
    /// before `until`, or they count as lost.
    /// `holder`: who the attempt was leased to, if recorded.
    pub fn expect(&mut self, key: AttemptKey, until: Instant, holder: Option<HolderRecord>) {
        self.unclaimed.insert(key, (until, holder));
    }

    /// Who an attempt leased to `agent` now is recorded as leased to.
    pub fn holder_record(&self, agent: &str, attempt: u32) -> HolderRecord {
        let (instance, state) = self
            .agents
            .get(agent)
            .map(|a| (a.hello.instance_id.clone(), a.hello.state_id.clone()))
            .unwrap_or_default();
        HolderRecord {
            attempt,
            agent: agent.to_string(),
            instance,
            state,
        }
    }

    /// Past `now`: the attempts nobody re-attached in time, and the agents silent for longer
    /// than `lost_after`.
    pub fn expired(
        &mut self,
        now: Instant,
        lost_after: Option<Duration>,
    ) -> (Vec<AttemptKey>, Vec<Arc<str>>) {
        let unclaimed: Vec<AttemptKey> = self
            .unclaimed
            .iter()
            .filter(|(_, (until, _))| *until <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &unclaimed {
            self.unclaimed.remove(k);
        }
        let silent = match lost_after {
            Some(limit) => self
                .agents
                .values()
                .filter(|a| now.saturating_duration_since(a.last_heard) > limit)
                .map(|a| Arc::clone(&a.id))
                .collect(),
            None => vec![],
        };
        (unclaimed, silent)
    }

    /// Forgets a lost agent; returns the attempts it held, to fail.
    pub fn lose(&mut self, id: &Arc<str>) -> Vec<AttemptKey> {
        let Some(agent) = self.agents.remove(id) else {
            return vec![];
        };
        if let Some(conn) = agent.conn {
            self.conns.remove(&conn);
        }
        tracing::warn!(agent = %id, "agent lost");
        let attempts: Vec<AttemptKey> = self
            .leases
            .iter()
            .filter(|(_, a)| *a == id)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &attempts {
            self.leases.remove(k);
        }
        attempts
    }

    /// The agents as placement sees them.
    pub fn candidates(&self) -> Vec<Candidate<'_>> {
        self.agents
            .values()
            .map(|a| Candidate {
                id: &a.id,
                identity: &a.identity,
                connected: a.tx.is_some(),
                draining: a.draining,
                slots: a.hello.slots,
                in_use: a.in_use,
            })
            .collect()
    }

    /// Counts for the metrics: agents by state, free slots, attempts leased.
    pub fn census(&self, s: &mut crate::metrics::Sample) {
        for a in self.agents.values() {
            match (a.tx.is_some(), a.draining) {
                (false, _) => s.agents_disconnected += 1,
                (true, true) => s.agents_draining += 1,
                (true, false) => {
                    s.agents_connected += 1;
                    s.slots_free += u64::from(a.hello.slots.saturating_sub(a.in_use));
                }
            }
        }
        s.leases = self.leases.len();
    }

    /// The agents as `agents` shows them, by name.
    pub fn infos(&self, now: Instant) -> Vec<AgentInfo> {
        let mut list: Vec<AgentInfo> = self
            .agents
            .values()
            .map(|a| AgentInfo {
                agent_id: a.id.to_string(),
                hostname: a.hello.hostname.clone(),
                ips: a.hello.ips.clone(),
                labels: a.hello.labels.clone(),
                slots: a.hello.slots,
                in_use: a.in_use,
                last_heard: now.saturating_duration_since(a.last_heard),
                version: a.hello.version.clone(),
                connected: a.tx.is_some(),
            })
            .collect();
        list.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        list
    }
}
