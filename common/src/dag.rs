//! The task graph (petgraph), Factotum's display order, and `--start` planning.

use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::time::Duration;

use petgraph::graph::{DiGraph, NodeIndex};

use crate::constraint::Constraint;
use crate::factfile::{Factfile, OnLost, Task};
use crate::template::command_line;

/// Index of a task inside a [`Plan`].
pub type TaskId = u32;

/// Returns the tasks of one cycle, if the graph (`deps[t]` = the tasks `t` depends on) has any.
/// A Kahn pass decides; petgraph's strongly connected components name the cycle.
pub fn find_cycle(deps: &[Vec<u32>]) -> Option<Vec<usize>> {
    let n = deps.len();
    let mut children: Vec<Vec<u32>> = vec![vec![]; n];
    for (t, ds) in deps.iter().enumerate() {
        for &d in ds {
            children[d as usize].push(t as u32);
        }
    }
    let mut unmet: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut queue: Vec<u32> = (0..n as u32).filter(|&t| unmet[t as usize] == 0).collect();
    let mut head = 0;
    while head < queue.len() {
        let t = queue[head] as usize;
        head += 1;
        for &c in &children[t] {
            unmet[c as usize] -= 1;
            if unmet[c as usize] == 0 {
                queue.push(c);
            }
        }
    }
    if queue.len() == n {
        return None;
    }
    let mut g: DiGraph<usize, ()> = DiGraph::with_capacity(n, n);
    for i in 0..n {
        g.add_node(i);
    }
    for (t, ds) in deps.iter().enumerate() {
        for &d in ds {
            g.add_edge(NodeIndex::new(d as usize), NodeIndex::new(t), ());
        }
    }
    let scc = petgraph::algo::tarjan_scc(&g)
        .into_iter()
        .find(|c| c.len() > 1)?;
    // Walk the component along dependency edges to print the cycle in order.
    let members: std::collections::HashSet<NodeIndex> = scc.iter().copied().collect();
    let start = *scc.iter().min()?;
    let mut cycle = vec![start.index()];
    let mut at = start;
    loop {
        let next = g.neighbors(at).filter(|n| members.contains(n)).min()?;
        if next == start || cycle.contains(&next.index()) {
            break;
        }
        cycle.push(next.index());
        at = next;
    }
    Some(cycle)
}

/// What one task of a plan needs at run time.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanTask {
    pub name: Arc<str>,
    /// The exact `sh -c` line.
    pub command_line: String,
    pub continue_job: Vec<i32>,
    pub terminate_job_with_success: Vec<i32>,
    pub deps: Vec<TaskId>,
    pub children: Vec<TaskId>,
    /// Boxed, and absent without policies: a 100,000-task plan pays 8 bytes a task for them.
    pub policy: Option<Box<TaskPolicy>>,
}

impl PlanTask {
    pub fn policy(&self) -> &TaskPolicy {
        static NONE: TaskPolicy = TaskPolicy {
            timeout: None,
            retry: None,
            continue_on_failure: false,
            retry_when_lost: false,
            env: Vec::new(),
            cwd: None,
            constraints: Vec::new(),
        };
        self.policy.as_deref().unwrap_or(&NONE)
    }
}

/// A task's policies from the extended factfile (all off for a Snowplow factfile).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskPolicy {
    /// One attempt may run this long.
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    /// Dependents run even if this task fails.
    pub continue_on_failure: bool,
    /// An attempt whose agent was lost is tried again (within the retry budget).
    pub retry_when_lost: bool,
    /// Added to the process environment.
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    /// On top of the run's constraints. Host addresses are resolved by the coordinator.
    pub constraints: Vec<Constraint>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    pub delay: Duration,
    pub backoff: f64,
    pub max_delay: Option<Duration>,
    /// Exit codes retried; `None`: any failure.
    pub on_return_codes: Option<Vec<i32>>,
}

impl RetryPolicy {
    /// The wait before attempt `next` (2 = the first retry): `delay * backoff^(next - 2)`,
    /// at most `max_delay`.
    pub fn delay_before(&self, next: u32) -> Duration {
        let factor = self.backoff.powi(next.saturating_sub(2).min(1000) as i32);
        let secs = self.delay.as_secs_f64() * factor;
        let capped = match self.max_delay {
            Some(m) => secs.min(m.as_secs_f64()),
            None => secs,
        };
        // A week at most: beyond that a number is a typo, and Duration must not overflow.
        Duration::from_secs_f64(capped.clamp(0.0, 7.0 * 86_400.0))
    }

    /// Whether this failure (an exit code, or `None` for one without: a spawn failure, a timeout)
    /// is one to retry.
    pub fn retries(&self, code: Option<i32>) -> bool {
        match (&self.on_return_codes, code) {
            (None, _) => true,
            (Some(codes), Some(c)) => codes.contains(&c),
            (Some(_), None) => false,
        }
    }
}

impl TaskPolicy {
    /// The task's policy; `None` for a task that has none (most, and every Snowplow one).
    fn of(t: &Task) -> Option<Box<TaskPolicy>> {
        let t = t.ext.as_deref()?;
        let secs =
            |s: Option<f64>| Duration::from_secs_f64(s.unwrap_or(0.0).clamp(0.0, 7.0 * 86_400.0));
        let mut constraints = vec![];
        if let Some(c) = &t.constraints {
            if let Some(h) = &c.host {
                constraints.push(Constraint::Host {
                    value: h.clone(),
                    resolved: vec![],
                });
            }
            for (k, v) in c.labels.iter().flatten() {
                constraints.push(Constraint::Label {
                    key: k.clone(),
                    value: v.clone(),
                });
            }
        }
        Some(Box::new(TaskPolicy {
            timeout: t.timeout.map(Duration::from_secs),
            retry: t.retry.as_ref().map(|r| RetryPolicy {
                attempts: r.attempts.max(1),
                delay: secs(r.delay_seconds),
                backoff: r.backoff.unwrap_or(1.0).max(1.0),
                max_delay: r.max_delay_seconds.map(|m| secs(Some(m))),
                on_return_codes: r.on_return_codes.clone(),
            }),
            continue_on_failure: t.continue_on_failure.unwrap_or(false),
            retry_when_lost: t.on_lost == Some(OnLost::Retry),
            env: t
                .env
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            cwd: t.cwd.clone(),
            constraints,
        }))
    }

    /// Attempts allowed for a failure of this kind: `retry.attempts`; a lost agent with
    /// `onLost: retry` and no `retry` block gets one more try.
    pub fn max_attempts(&self, lost: bool) -> u32 {
        match (&self.retry, lost && self.retry_when_lost) {
            (Some(r), _) => r.attempts,
            (None, true) => 2,
            (None, false) => 1,
        }
    }
}

/// The tasks of one run: the whole factfile, or the sub-tree below `--start`.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub job_name: String,
    /// The whole run may take this long (the job's `timeout`).
    pub timeout: Option<Duration>,
    /// Tasks of the run running at once, at most.
    pub max_parallel: Option<u32>,
    /// Whether any task has a timeout or retries (the run has timers to keep).
    pub has_timers: bool,
    pub tasks: Vec<PlanTask>,
    /// Task ids in Factotum's display order (by depth, as Factotum lists `taskStates`).
    pub order: Vec<TaskId>,
    /// Position of each task in `order`.
    pub position: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("The job cannot be started from '{0}' because the task specified could not be found")]
    UnknownStart(String),
    #[error(
        "The job cannot be started from '{0}' because the job cannot be started here without triggering prior tasks"
    )]
    PriorTasks(String),
}

impl Plan {
    /// The tasks a `--from-failed` rerun runs: every task not in `succeeded`, and their
    /// descendants, in display order.
    pub(crate) fn not_succeeded(&self, succeeded: &[bool]) -> Vec<TaskId> {
        let mut keep = vec![false; self.tasks.len()];
        let roots: Vec<TaskId> = (0..self.tasks.len() as TaskId)
            .filter(|&t| !succeeded.get(t as usize).copied().unwrap_or(false))
            .collect();
        for &t in &roots {
            keep[t as usize] = true;
        }
        self.mark_below(&roots, &mut keep, |_| {});
        self.order
            .iter()
            .copied()
            .filter(|&t| keep[t as usize])
            .collect()
    }
}

impl Plan {
    /// Plans the whole factfile.
    pub fn new(ff: &Factfile) -> Plan {
        Self::build(ff, None)
    }

    /// Plans `start` and its descendants. Factotum's rule: every descendant's dependencies must be
    /// `start` itself or other descendants, or starting there would skip work it needs.
    pub fn from_start(ff: &Factfile, start: &str) -> Result<Plan, PlanError> {
        Self::from_starts(ff, &[start.to_string()])
    }

    /// Plans several start tasks and all their descendants (none: the whole factfile). Factotum's
    /// rule holds for the union: a planned task that is not a start may depend only on planned
    /// tasks, so a join below two starts is fine when both are given.
    pub fn from_starts(ff: &Factfile, starts: &[String]) -> Result<Plan, PlanError> {
        if starts.is_empty() {
            return Ok(Self::new(ff));
        }
        let full = Self::new(ff);
        let mut keep = vec![false; full.tasks.len()];
        let mut is_start = vec![false; full.tasks.len()];
        // Which start first reached each task (to name it in an error).
        let mut reached_from = vec![0usize; full.tasks.len()];
        for (s, start) in starts.iter().enumerate() {
            let Some(root) = full.tasks.iter().position(|t| &*t.name == start) else {
                return Err(PlanError::UnknownStart(start.to_string()));
            };
            is_start[root] = true;
            if keep[root] {
                continue;
            }
            keep[root] = true;
            reached_from[root] = s;
            full.mark_below(&[root as TaskId], &mut keep, |c| {
                reached_from[c as usize] = s
            });
        }
        for &i in &full.order {
            let i = i as usize;
            if keep[i] && !is_start[i] && full.tasks[i].deps.iter().any(|&d| !keep[d as usize]) {
                return Err(PlanError::PriorTasks(starts[reached_from[i]].clone()));
            }
        }
        Ok(Self::build(ff, Some(&keep)))
    }

    /// Plans exactly these tasks of the factfile (a recorded plan, rebuilt after a failover).
    pub fn subset(ff: &Factfile, names: &[String]) -> Plan {
        let wanted: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
        let keep: Vec<bool> = ff
            .data
            .tasks
            .iter()
            .map(|t| wanted.contains(t.name.as_str()))
            .collect();
        Self::build(ff, Some(&keep))
    }

    fn build(ff: &Factfile, keep: Option<&[bool]>) -> Plan {
        let src: Vec<(usize, &Task)> = ff
            .data
            .tasks
            .iter()
            .enumerate()
            .filter(|(i, _)| keep.is_none_or(|k| k[*i]))
            .collect();
        let mut index: FxHashMap<&str, TaskId> = FxHashMap::default();
        index.reserve(src.len());
        for (new, (_, t)) in src.iter().enumerate() {
            index.insert(t.name.as_str(), new as TaskId);
        }
        let mut tasks: Vec<PlanTask> = src
            .iter()
            .map(|(_, t)| PlanTask {
                name: Arc::from(t.name.as_str()),
                command_line: command_line(&t.command, &t.arguments),
                continue_job: t.on_result.continue_job.clone(),
                terminate_job_with_success: t.on_result.terminate_job_with_success.clone(),
                deps: t
                    .depends_on
                    .iter()
                    .filter_map(|d| index.get(d.as_str()).copied())
                    .collect(),
                children: vec![],
                policy: TaskPolicy::of(t),
            })
            .collect();
        for i in 0..tasks.len() {
            for j in 0..tasks[i].deps.len() {
                let d = tasks[i].deps[j];
                tasks[d as usize].children.push(i as TaskId);
            }
        }
        let order = display_order(&tasks);
        let mut position = vec![0u32; tasks.len()];
        for (p, &t) in order.iter().enumerate() {
            position[t as usize] = p as u32;
        }
        Plan {
            job_name: ff.data.name.clone(),
            timeout: ff.data.timeout.map(Duration::from_secs),
            max_parallel: ff.data.max_parallel,
            has_timers: ff.data.timeout.is_some()
                || tasks
                    .iter()
                    .any(|t| t.policy().timeout.is_some() || t.policy().max_attempts(true) > 1),
            tasks,
            order,
            position,
        }
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub fn task(&self, id: TaskId) -> Option<&PlanTask> {
        self.tasks.get(id as usize)
    }

    /// Every descendant of `id` (not `id` itself), in display order.
    pub fn descendants(&self, id: TaskId) -> Vec<TaskId> {
        let mut out = vec![];
        self.mark_below(&[id], &mut vec![false; self.tasks.len()], |c| out.push(c));
        self.sort_display(&mut out);
        out
    }

    /// Marks every unmarked task below `roots` (not the roots themselves), calling `newly`
    /// for each one it marks.
    fn mark_below(&self, roots: &[TaskId], marked: &mut [bool], mut newly: impl FnMut(TaskId)) {
        let mut stack = roots.to_vec();
        while let Some(t) = stack.pop() {
            for &c in &self.tasks[t as usize].children {
                if !marked[c as usize] {
                    marked[c as usize] = true;
                    newly(c);
                    stack.push(c);
                }
            }
        }
    }

    pub fn sort_display(&self, ids: &mut [TaskId]) {
        ids.sort_unstable_by_key(|&t| self.position[t as usize]);
    }
}

/// Factotum lists tasks level by level (a task's level is its longest dependency path from a
/// root); inside a level, in the order a depth-first walk from the roots first reaches them, where
/// each node's children are visited newest edge first (petgraph's order, which Factotum exposed).
fn display_order(tasks: &[PlanTask]) -> Vec<TaskId> {
    let n = tasks.len();
    // Levels by a topological pass (the graph is acyclic by now).
    let mut level = vec![0u32; n];
    let mut unmet: Vec<usize> = tasks.iter().map(|t| t.deps.len()).collect();
    let mut queue: Vec<TaskId> = (0..n as TaskId)
        .filter(|&t| unmet[t as usize] == 0)
        .collect();
    let mut head = 0;
    while head < queue.len() {
        let t = queue[head] as usize;
        head += 1;
        for &c in &tasks[t].children {
            level[c as usize] = level[c as usize].max(level[t] + 1);
            unmet[c as usize] -= 1;
            if unmet[c as usize] == 0 {
                queue.push(c);
            }
        }
    }
    // Depth-first preorder from a virtual root whose children are the roots, newest first.
    let roots: Vec<TaskId> = (0..n as TaskId)
        .rev()
        .filter(|&t| tasks[t as usize].deps.is_empty())
        .collect();
    let mut visited = vec![false; n];
    let mut preorder = Vec::with_capacity(n);
    let mut stack: Vec<(Option<TaskId>, usize)> = vec![(None, 0)];
    while let Some((node, next)) = stack.last_mut() {
        let children: &[TaskId] = match node {
            None => &roots,
            Some(t) => &tasks[*t as usize].children,
        };
        let reversed = node.is_some();
        if *next >= children.len() {
            stack.pop();
            continue;
        }
        let child = if reversed {
            children[children.len() - 1 - *next]
        } else {
            children[*next]
        };
        *next += 1;
        if !visited[child as usize] {
            visited[child as usize] = true;
            preorder.push(child);
            stack.push((Some(child), 0));
        }
    }
    preorder.sort_by_key(|&t| level[t as usize]);
    preorder
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::factfile::{Factfile, Job, OnResult, SNOWPLOW_SCHEMA};

    pub(crate) fn ff(spec: &[(&str, &[&str])]) -> Factfile {
        Factfile {
            schema: SNOWPLOW_SCHEMA.into(),
            data: Job {
                name: "test".into(),
                tasks: spec
                    .iter()
                    .map(|(n, deps)| Task {
                        name: n.to_string(),
                        executor: "shell".into(),
                        command: "echo".into(),
                        arguments: vec![n.to_string()],
                        depends_on: deps.iter().map(|d| d.to_string()).collect(),
                        on_result: OnResult {
                            terminate_job_with_success: vec![3],
                            continue_job: vec![0],
                        },
                        ..Task::default()
                    })
                    .collect(),
                ..Job::default()
            },
        }
    }

    fn names(p: &Plan) -> Vec<&str> {
        p.order
            .iter()
            .map(|&t| &*p.tasks[t as usize].name)
            .collect()
    }

    #[test]
    fn display_order_matches_factotum_observations() {
        // multi-failure-cascade: Factotum listed setup, delayed-fail, slow-success, quick-fail, ...
        let p = Plan::new(&ff(&[
            ("setup", &[]),
            ("quick-fail", &["setup"]),
            ("slow-success", &["setup"]),
            ("delayed-fail", &["setup"]),
            ("dq", &["quick-fail"]),
            ("dd", &["delayed-fail"]),
            ("final", &["dq", "dd", "slow-success"]),
        ]));
        assert_eq!(
            names(&p),
            [
                "setup",
                "delayed-fail",
                "slow-success",
                "quick-fail",
                "dd",
                "dq",
                "final"
            ]
        );
        let p = Plan::new(&ff(&[
            ("sleep", &[]),
            ("sleep2", &["sleep"]),
            ("sleep3", &["sleep"]),
            ("done", &["sleep2", "sleep3"]),
        ]));
        assert_eq!(names(&p), ["sleep", "sleep3", "sleep2", "done"]);
        let p = Plan::new(&ff(&[("long", &[]), ("short", &[])]));
        assert_eq!(names(&p), ["short", "long"]);
    }

    #[test]
    fn start_planning_follows_factotums_rule() {
        let f = ff(&[
            ("a", &[]),
            ("b", &["a"]),
            ("c", &["a"]),
            ("d", &["b", "c"]),
            ("e", &["b"]),
        ]);
        let p = Plan::from_start(&f, "b").unwrap_err();
        assert_eq!(
            p.to_string(),
            "The job cannot be started from 'b' because the job cannot be started here without triggering prior tasks"
        );
        let p = Plan::from_start(&f, "a").unwrap();
        assert_eq!(p.len(), 5);
        let p = Plan::from_start(&f, "e").unwrap();
        assert_eq!(names(&p), ["e"]);
        assert!(p.tasks[0].deps.is_empty());
        assert_eq!(
            Plan::from_start(&f, "zz").unwrap_err().to_string(),
            "The job cannot be started from 'zz' because the task specified could not be found"
        );
        let chain = ff(&[("x", &[]), ("y", &["x"]), ("z", &["y"])]);
        let p = Plan::from_start(&chain, "y").unwrap();
        assert_eq!(names(&p), ["y", "z"]);
    }

    #[test]
    fn several_starts_plan_the_union_and_a_join_needs_both() {
        let f = ff(&[
            ("a", &[]),
            ("b", &["a"]),
            ("c", &["a"]),
            ("d", &["b", "c"]),
            ("e", &["b"]),
            ("f", &["a"]),
        ]);
        let starts = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let p = Plan::from_starts(&f, &starts(&["b", "c"])).unwrap();
        let mut got = names(&p);
        got.sort();
        assert_eq!(got, ["b", "c", "d", "e"]);
        assert!(p
            .tasks
            .iter()
            .find(|t| &*t.name == "b")
            .unwrap()
            .deps
            .is_empty());
        // c alone would trigger d without b.
        assert_eq!(
            Plan::from_starts(&f, &starts(&["c"])).unwrap_err(),
            PlanError::PriorTasks("c".into())
        );
        assert_eq!(
            Plan::from_starts(&f, &starts(&["b", "nope"])).unwrap_err(),
            PlanError::UnknownStart("nope".into())
        );
        // A start below another start, and a repeated one, change nothing.
        let p = Plan::from_starts(&f, &starts(&["a", "d", "a"])).unwrap();
        assert_eq!(p.len(), 6);
        assert_eq!(Plan::from_starts(&f, &[]).unwrap(), Plan::new(&f));
    }

    #[test]
    fn descendants_in_display_order() {
        let p = Plan::new(&ff(&[
            ("a", &[]),
            ("b", &["a"]),
            ("c", &["a"]),
            ("d", &["b"]),
        ]));
        let d: Vec<&str> = p
            .descendants(0)
            .iter()
            .map(|&t| &*p.tasks[t as usize].name)
            .collect();
        assert_eq!(d, ["c", "b", "d"]);
    }

    #[test]
    fn deep_chains_do_not_overflow() {
        let names: Vec<String> = (0..50_000).map(|i| format!("t{i}")).collect();
        let deps: Vec<Vec<&str>> = (0..50_000)
            .map(|i| {
                if i == 0 {
                    vec![]
                } else {
                    vec![names[i - 1].as_str()]
                }
            })
            .collect();
        let spec: Vec<(&str, &[&str])> = names
            .iter()
            .zip(&deps)
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        let p = Plan::new(&ff(&spec));
        assert_eq!(p.order.len(), 50_000);
        assert_eq!(p.order[49_999], 49_999);
    }
}
