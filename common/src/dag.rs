//! Planning: the tasks of one run (the whole factfile, or the sub-tree below `--start`) over
//! the graph [`crate::graph`] resolved, in Factotum's display order.

mod policy;

use std::sync::Arc;
use std::time::Duration;

use crate::factfile::{Factfile, Task};
use crate::graph::{mark_below, topological_order, Graph, GraphError};
use crate::template::command_line;

pub use crate::graph::TaskId;
pub use policy::{PlanTask, RetryPolicy, TaskPolicy};

/// Resolves the factfile's graph (the one resolution validation also uses).
fn resolve(ff: &Factfile) -> (Graph, Option<GraphError>) {
    Graph::resolve(&ff.data.tasks, |t: &Task| &t.name, |t: &Task| &t.depends_on)
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
    /// The plan with at most `limit` tasks running at once (`--parallel`), within the job's
    /// own `maxParallel`.
    pub fn limited(mut self, limit: Option<u32>) -> Plan {
        if let Some(n) = limit {
            self.max_parallel = Some(self.max_parallel.map_or(n, |m| m.min(n)));
        }
        self
    }

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
    /// The plan with each task's [`TaskPolicy::redact`] set: `run_secrets` (a run's `--env`
    /// string leaves) and the task's own `env` values, those worth redacting
    /// ([`crate::redact::secrets`]). Tasks without `env` of their own share one list.
    pub fn redacting(mut self, run_secrets: &[String]) -> Plan {
        let shared: Option<Arc<[String]>> = {
            let s = crate::redact::secrets(run_secrets);
            (!s.is_empty()).then(|| s.into())
        };
        for t in &mut self.tasks {
            let own = &t.policy().env;
            let list = if own.is_empty() {
                shared.clone()
            } else {
                let all = run_secrets
                    .iter()
                    .map(String::as_str)
                    .chain(own.iter().map(|(_, v)| v.as_str()));
                let s = crate::redact::secrets(all);
                (!s.is_empty()).then(|| s.into())
            };
            if let Some(list) = list {
                t.policy.get_or_insert_with(Box::default).redact = Some(list);
            }
        }
        self
    }

    /// Plans the whole factfile, which must have passed validation (every way of reading one
    /// validates it); see [`Plan::try_new`] for one that may not have.
    pub fn new(ff: &Factfile) -> Plan {
        Self::build(ff, resolve(ff).0, None)
    }

    /// Plans the whole factfile, or says what is wrong with its graph: the same answer
    /// validation gives, from the same resolution.
    pub fn try_new(ff: &Factfile) -> Result<Plan, GraphError> {
        let graph = Graph::check(&ff.data.tasks, |t| &t.name, |t| &t.depends_on)?;
        Ok(Self::build(ff, graph, None))
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
        let graph = resolve(ff).0;
        if starts.is_empty() {
            return Ok(Self::build(ff, graph, None));
        }
        let children = graph.children();
        let tasks = &ff.data.tasks;
        let mut keep = vec![false; tasks.len()];
        let mut is_start = vec![false; tasks.len()];
        // Which start first reached each task (to name it in an error).
        let mut reached_from = vec![0usize; tasks.len()];
        for (s, start) in starts.iter().enumerate() {
            let Some(root) = tasks.iter().position(|t| &t.name == start) else {
                return Err(PlanError::UnknownStart(start.to_string()));
            };
            is_start[root] = true;
            if keep[root] {
                continue;
            }
            keep[root] = true;
            reached_from[root] = s;
            mark_below(
                |t| &children[t as usize],
                &[root as TaskId],
                &mut keep,
                |c| reached_from[c as usize] = s,
            );
        }
        // The first offender in display order names its start.
        let order = display_order(graph.len(), |t| &graph.deps[t], |t| &children[t]);
        for i in order {
            let i = i as usize;
            if keep[i] && !is_start[i] && graph.deps[i].iter().any(|&d| !keep[d as usize]) {
                return Err(PlanError::PriorTasks(starts[reached_from[i]].clone()));
            }
        }
        Ok(Self::build(ff, graph, Some(&keep)))
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
        Self::build(ff, resolve(ff).0, Some(&keep))
    }

    /// The plan of the tasks in `keep` (all: `None`) over the factfile's resolved graph.
    fn build(ff: &Factfile, graph: Graph, keep: Option<&[bool]>) -> Plan {
        let Graph { deps } = match keep {
            Some(k) => graph.induced(k),
            None => graph,
        };
        let src = ff
            .data
            .tasks
            .iter()
            .enumerate()
            .filter(|(i, _)| keep.is_none_or(|k| k[*i]))
            .map(|(_, t)| t);
        // Sized up front: a filtered iterator would grow the vector by doubling, and a 100,000-task
        // plan is 14 MB of it.
        let mut tasks: Vec<PlanTask> = Vec::with_capacity(deps.len());
        tasks.extend(src.zip(deps).map(|(t, deps)| PlanTask {
            name: Arc::from(t.name.as_str()),
            command_line: command_line(&t.command, &t.arguments),
            continue_job: t.on_result.continue_job.clone(),
            terminate_job_with_success: t.on_result.terminate_job_with_success.clone(),
            deps,
            children: vec![],
            policy: TaskPolicy::of(t),
        }));
        for i in 0..tasks.len() {
            for j in 0..tasks[i].deps.len() {
                let d = tasks[i].deps[j];
                tasks[d as usize].children.push(i as TaskId);
            }
        }
        let order = display_order(tasks.len(), |t| &tasks[t].deps, |t| &tasks[t].children);
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
    fn mark_below(&self, roots: &[TaskId], marked: &mut [bool], newly: impl FnMut(TaskId)) {
        mark_below(|t| &self.tasks[t as usize].children, roots, marked, newly)
    }

    pub fn sort_display(&self, ids: &mut [TaskId]) {
        ids.sort_unstable_by_key(|&t| self.position[t as usize]);
    }
}

/// Factotum lists tasks level by level (a task's level is its longest dependency path from a
/// root); inside a level, in the order a depth-first walk from the roots first reaches them, where
/// each node's children are visited newest edge first (petgraph's order, which Factotum exposed).
fn display_order<'g>(
    n: usize,
    deps: impl Fn(usize) -> &'g Vec<TaskId>,
    children: impl Fn(usize) -> &'g Vec<TaskId>,
) -> Vec<TaskId> {
    // Levels along a topological order (the graph is acyclic by now).
    let mut level = vec![0u32; n];
    for t in topological_order(n, |t| deps(t).len(), |t| children(t)) {
        let t = t as usize;
        for &c in children(t) {
            level[c as usize] = level[c as usize].max(level[t] + 1);
        }
    }
    // Depth-first preorder from a virtual root whose children are the roots, newest first.
    let roots: Vec<TaskId> = (0..n as TaskId)
        .rev()
        .filter(|&t| deps(t as usize).is_empty())
        .collect();
    let mut visited = vec![false; n];
    let mut preorder = Vec::with_capacity(n);
    let mut stack: Vec<(Option<TaskId>, usize)> = vec![(None, 0)];
    while let Some((node, next)) = stack.last_mut() {
        let children: &[TaskId] = match node {
            None => &roots,
            Some(t) => children(*t as usize),
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
pub(crate) mod tests;
