//! Placement, pure: which agent takes which ready task, and why the others wait.
//!
//! Shaped like Nomad's scheduler: *feasibility* (an agent is connected, not draining, and meets
//! the run's and the task's constraints), *ranking* (a sticky run's own agent first, else the
//! least loaded, ties by name), and *explanation* (the waiting reason comes from the same
//! filters that placed the others). No IO and no engine state: the caller passes plain views
//! and applies the answer.

use std::sync::Arc;

use factotum_common::constraint::{Constraint, Identity, Placement};
use factotum_common::dag::TaskId;

/// An agent as placement sees it.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub id: &'a Arc<str>,
    pub identity: &'a Identity,
    /// It has a live session (a disconnected agent may come back for its attempts).
    pub connected: bool,
    /// Shutting down: it takes no new leases.
    pub draining: bool,
    /// Attempts it runs at once (0: no limit).
    pub slots: u32,
    pub in_use: u32,
}

impl Candidate<'_> {
    fn accepting(&self) -> bool {
        self.connected && !self.draining
    }

    fn has_slot(&self, in_use: u32) -> bool {
        self.accepting() && (self.slots == 0 || in_use < self.slots)
    }
}

/// One ready task that may be leased now.
#[derive(Debug, Clone)]
pub struct Want<'a> {
    pub task: TaskId,
    pub name: &'a str,
    /// The task's own constraints (on top of the run's).
    pub constraints: &'a [Constraint],
}

/// What a run asks of placement.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    pub placement: Placement,
    /// The run's constraints: every task's agent must meet them.
    pub constraints: &'a [Constraint],
    /// The agent that took the run's first task.
    pub sticky: Option<&'a Arc<str>>,
    /// The leasable tasks, in the order the run offers them.
    pub tasks: Vec<Want<'a>>,
    /// Ready tasks the job's `maxParallel` holds back, and that limit.
    pub held_back: usize,
    pub max_parallel: u32,
}

/// Placement's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placed {
    /// Task → agent, in the order the tasks were offered.
    pub leases: Vec<(TaskId, Arc<str>)>,
    /// A sticky run's agent, when this placement chose it (its first task's).
    pub new_sticky: Option<Arc<str>>,
    /// Why ready tasks still wait, if any do.
    pub waiting: Option<String>,
}

/// Places `ask`'s tasks on `agents`, counting the slots it uses as it goes.
pub fn place(ask: &Ask, agents: &[Candidate]) -> Placed {
    let mut in_use: Vec<u32> = agents.iter().map(|a| a.in_use).collect();
    let eligible = |a: &Candidate, own: &[Constraint]| {
        ask.constraints
            .iter()
            .chain(own)
            .all(|c| c.matches(a.identity))
    };
    let index = |id: &Arc<str>| agents.iter().position(|a| a.id == id);
    // A sticky run follows its agent while that agent is connected and not draining.
    let mut sticky: Option<usize> = ask
        .sticky
        .filter(|_| ask.placement == Placement::Sticky)
        .and_then(index)
        .filter(|&i| agents[i].accepting());
    let mut placed = Placed::default();
    // Tasks without constraints of their own all have the same choices: once one finds no
    // agent, the others would not either.
    let mut plain_full = false;
    let mut unplaced: Option<&Want> = None;
    for want in &ask.tasks {
        let own = want.constraints;
        if own.is_empty() && plain_full {
            unplaced.get_or_insert(want);
            continue;
        }
        let on_sticky = sticky.filter(|&s| own.is_empty() || eligible(&agents[s], own));
        let choice = match on_sticky {
            Some(s) => Some(s).filter(|&s| agents[s].has_slot(in_use[s])),
            None => (0..agents.len())
                .filter(|&i| agents[i].has_slot(in_use[i]) && eligible(&agents[i], own))
                .min_by(|&a, &b| (in_use[a], agents[a].id).cmp(&(in_use[b], agents[b].id))),
        };
        let Some(i) = choice else {
            unplaced.get_or_insert(want);
            plain_full |= own.is_empty();
            continue;
        };
        in_use[i] += 1;
        if ask.placement == Placement::Sticky && sticky.is_none() && own.is_empty() {
            sticky = Some(i);
            placed.new_sticky = Some(Arc::clone(agents[i].id));
        }
        placed.leases.push((want.task, Arc::clone(agents[i].id)));
    }
    placed.waiting = match unplaced {
        Some(want) => {
            let sticky = sticky.map(|s| &**agents[s].id);
            let why = waiting_reason(ask.constraints, want.constraints, sticky, agents);
            Some(if want.constraints.is_empty() {
                why
            } else {
                format!("task '{}': {why}", want.name)
            })
        }
        None if ask.held_back > 0 => Some(format!(
            "{} task(s) ready, held back by the job's maxParallel of {}",
            ask.held_back, ask.max_parallel
        )),
        None => None,
    };
    placed
}

/// Why a task waits, in words an operator can act on: the same filters as [`place`], asked
/// one at a time.
fn waiting_reason(
    run: &[Constraint],
    own: &[Constraint],
    sticky: Option<&str>,
    agents: &[Candidate],
) -> String {
    if let Some(s) = sticky.filter(|_| own.is_empty()) {
        return format!("waiting for a free slot on agent {s} (sticky placement)");
    }
    let all: Vec<&Constraint> = run.iter().chain(own).collect();
    let connected: Vec<&Candidate> = agents.iter().filter(|a| a.connected).collect();
    if connected.is_empty() {
        return "no agent is connected".into();
    }
    let failing: Vec<String> = all
        .iter()
        .filter(|c| !connected.iter().any(|a| c.matches(a.identity)))
        .map(|c| c.to_string())
        .collect();
    if !failing.is_empty() {
        return format!("no connected agent has {}", failing.join(", "));
    }
    if !connected
        .iter()
        .any(|a| all.iter().all(|c| c.matches(a.identity)))
    {
        let all: Vec<String> = all.iter().map(|c| c.to_string()).collect();
        return format!("no connected agent has {} together", all.join(" and "));
    }
    "every eligible agent is busy".into()
}

#[cfg(test)]
mod tests;
