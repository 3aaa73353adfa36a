//! Table tests of placement: every waiting-reason branch, sticky and spread, slots, labels,
//! per-task constraints and `maxParallel`.

use std::collections::HashMap;

use super::*;

struct Fleet {
    ids: Vec<Arc<str>>,
    identities: Vec<Identity>,
    state: Vec<(bool, bool, u32, u32)>, // connected, draining, slots, in_use
}

impl Fleet {
    fn new() -> Fleet {
        Fleet {
            ids: vec![],
            identities: vec![],
            state: vec![],
        }
    }

    /// An agent named `id` with `slots` (0: unlimited) and `labels` ("k=v").
    fn agent(mut self, id: &str, slots: u32, labels: &[&str]) -> Fleet {
        let labels: HashMap<String, String> = labels
            .iter()
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        self.ids.push(Arc::from(id));
        self.identities.push(Identity {
            hostname: id.to_string(),
            ips: vec![],
            labels,
        });
        self.state.push((true, false, slots, 0));
        self
    }

    fn busy(mut self, id: &str, in_use: u32) -> Fleet {
        let i = self.ids.iter().position(|a| &**a == id).unwrap();
        self.state[i].3 = in_use;
        self
    }

    fn disconnected(mut self, id: &str) -> Fleet {
        let i = self.ids.iter().position(|a| &**a == id).unwrap();
        self.state[i].0 = false;
        self
    }

    fn draining(mut self, id: &str) -> Fleet {
        let i = self.ids.iter().position(|a| &**a == id).unwrap();
        self.state[i].1 = true;
        self
    }

    fn candidates(&self) -> Vec<Candidate<'_>> {
        (0..self.ids.len())
            .map(|i| Candidate {
                id: &self.ids[i],
                identity: &self.identities[i],
                connected: self.state[i].0,
                draining: self.state[i].1,
                slots: self.state[i].2,
                in_use: self.state[i].3,
            })
            .collect()
    }
}

fn label(kv: &str) -> Constraint {
    let (key, value) = kv.split_once('=').unwrap();
    Constraint::Label {
        key: key.into(),
        value: value.into(),
    }
}

fn host(name: &str) -> Constraint {
    Constraint::Host {
        value: name.into(),
        resolved: vec![],
    }
}

const NONE: &[Constraint] = &[];

fn plain(n: u32) -> Vec<Want<'static>> {
    (0..n)
        .map(|t| Want {
            task: t,
            name: "t",
            constraints: NONE,
        })
        .collect()
}

fn ask<'a>(placement: Placement, run: &'a [Constraint], tasks: Vec<Want<'a>>) -> Ask<'a> {
    Ask {
        placement,
        constraints: run,
        sticky: None,
        tasks,
        held_back: 0,
        max_parallel: 0,
    }
}

fn on(placed: &Placed) -> Vec<(TaskId, &str)> {
    placed.leases.iter().map(|(t, a)| (*t, &**a)).collect()
}

#[test]
fn spread_places_each_task_on_the_least_loaded_agent_ties_by_name() {
    let fleet = Fleet::new()
        .agent("b", 0, &[])
        .agent("a", 0, &[])
        .busy("b", 1);
    let placed = place(&ask(Placement::Spread, NONE, plain(3)), &fleet.candidates());
    assert_eq!(on(&placed), vec![(0, "a"), (1, "a"), (2, "b")]);
    assert_eq!(placed.new_sticky, None);
    assert_eq!(placed.waiting, None);
}

#[test]
fn sticky_puts_the_whole_run_on_the_agent_of_its_first_task() {
    let fleet = Fleet::new().agent("a", 0, &[]).agent("b", 0, &[]);
    let placed = place(&ask(Placement::Sticky, NONE, plain(3)), &fleet.candidates());
    assert_eq!(on(&placed), vec![(0, "a"), (1, "a"), (2, "a")]);
    assert_eq!(placed.new_sticky.as_deref(), Some("a"));
}

#[test]
fn a_sticky_run_follows_its_agent_even_when_another_is_idle() {
    let fleet = Fleet::new()
        .agent("a", 0, &[])
        .agent("b", 0, &[])
        .busy("b", 5);
    let b: Arc<str> = Arc::from("b");
    let mut a = ask(Placement::Sticky, NONE, plain(1));
    a.sticky = Some(&b);
    let placed = place(&a, &fleet.candidates());
    assert_eq!(on(&placed), vec![(0, "b")]);
    assert_eq!(placed.new_sticky, None, "already sticky");
}

#[test]
fn a_full_sticky_agent_makes_the_run_wait_for_it_with_its_name() {
    let fleet = Fleet::new().agent("a", 1, &[]).agent("b", 4, &[]);
    let placed = place(&ask(Placement::Sticky, NONE, plain(2)), &fleet.candidates());
    assert_eq!(on(&placed), vec![(0, "a")]);
    assert_eq!(
        placed.waiting.as_deref(),
        Some("waiting for a free slot on agent a (sticky placement)")
    );
}

#[test]
fn a_sticky_run_whose_agent_left_or_drains_moves_on() {
    let a: Arc<str> = Arc::from("a");
    for fleet in [
        Fleet::new()
            .agent("a", 0, &[])
            .agent("b", 0, &[])
            .disconnected("a"),
        Fleet::new()
            .agent("a", 0, &[])
            .agent("b", 0, &[])
            .draining("a"),
    ] {
        let mut ask = ask(Placement::Sticky, NONE, plain(1));
        ask.sticky = Some(&a);
        let placed = place(&ask, &fleet.candidates());
        assert_eq!(on(&placed), vec![(0, "b")]);
        assert_eq!(placed.new_sticky.as_deref(), Some("b"));
    }
}

#[test]
fn slots_bound_what_an_agent_takes() {
    let fleet = Fleet::new().agent("a", 2, &[]).busy("a", 1);
    let placed = place(&ask(Placement::Spread, NONE, plain(3)), &fleet.candidates());
    assert_eq!(on(&placed), vec![(0, "a")]);
    assert_eq!(
        placed.waiting.as_deref(),
        Some("every eligible agent is busy")
    );
}

#[test]
fn with_no_agent_connected_the_run_says_so() {
    let fleet = Fleet::new().agent("a", 0, &[]).disconnected("a");
    for fleet in [Fleet::new(), fleet] {
        let placed = place(&ask(Placement::Spread, NONE, plain(1)), &fleet.candidates());
        assert!(placed.leases.is_empty());
        assert_eq!(placed.waiting.as_deref(), Some("no agent is connected"));
    }
}

#[test]
fn a_constraint_no_agent_meets_is_named() {
    let fleet = Fleet::new().agent("a", 0, &["zone=eu"]);
    let run = [label("zone=us"), host("etl-3")];
    let placed = place(&ask(Placement::Spread, &run, plain(1)), &fleet.candidates());
    assert!(placed.leases.is_empty());
    assert_eq!(
        placed.waiting.as_deref(),
        Some("no connected agent has label zone=us, host=etl-3")
    );
}

#[test]
fn constraints_met_only_by_different_agents_are_named_together() {
    let fleet = Fleet::new()
        .agent("a", 0, &["zone=eu"])
        .agent("b", 0, &["gpu=yes"]);
    let run = [label("zone=eu"), label("gpu=yes")];
    let placed = place(&ask(Placement::Spread, &run, plain(1)), &fleet.candidates());
    assert!(placed.leases.is_empty());
    assert_eq!(
        placed.waiting.as_deref(),
        Some("no connected agent has label zone=eu and label gpu=yes together")
    );
}

#[test]
fn labels_route_and_a_task_with_its_own_constraint_is_named_when_it_waits() {
    let fleet = Fleet::new()
        .agent("cpu", 0, &["kind=cpu"])
        .agent("gpu", 1, &["kind=gpu"])
        .busy("gpu", 1);
    let gpu = [label("kind=gpu")];
    let cpu = [label("kind=cpu")];
    let tasks = vec![
        Want {
            task: 0,
            name: "train",
            constraints: &gpu,
        },
        Want {
            task: 1,
            name: "prep",
            constraints: &cpu,
        },
    ];
    let placed = place(&ask(Placement::Spread, NONE, tasks), &fleet.candidates());
    assert_eq!(on(&placed), vec![(1, "cpu")]);
    assert_eq!(
        placed.waiting.as_deref(),
        Some("task 'train': every eligible agent is busy")
    );
}

#[test]
fn a_task_with_its_own_constraints_leaves_the_sticky_agent_when_it_does_not_qualify() {
    let fleet = Fleet::new()
        .agent("a", 0, &[])
        .agent("gpu", 0, &["gpu=yes"]);
    let gpu = [label("gpu=yes")];
    let mut tasks = plain(1);
    tasks.push(Want {
        task: 1,
        name: "train",
        constraints: &gpu,
    });
    tasks.push(Want {
        task: 2,
        name: "t",
        constraints: NONE,
    });
    let placed = place(&ask(Placement::Sticky, NONE, tasks), &fleet.candidates());
    assert_eq!(on(&placed), vec![(0, "a"), (1, "gpu"), (2, "a")]);
    assert_eq!(placed.new_sticky.as_deref(), Some("a"));
}

#[test]
fn held_back_tasks_give_the_max_parallel_reason() {
    let fleet = Fleet::new().agent("a", 0, &[]);
    let mut a = ask(Placement::Spread, NONE, plain(1));
    a.held_back = 2;
    a.max_parallel = 1;
    let placed = place(&a, &fleet.candidates());
    assert_eq!(on(&placed), vec![(0, "a")]);
    assert_eq!(
        placed.waiting.as_deref(),
        Some("2 task(s) ready, held back by the job's maxParallel of 1")
    );
}

#[test]
fn a_draining_agent_takes_nothing_new() {
    let fleet = Fleet::new().agent("a", 0, &[]).draining("a");
    let placed = place(&ask(Placement::Spread, NONE, plain(1)), &fleet.candidates());
    assert!(placed.leases.is_empty());
    assert_eq!(
        placed.waiting.as_deref(),
        Some("every eligible agent is busy")
    );
}
