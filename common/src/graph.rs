//! The task graph of a factfile, resolved once: names to indices, dependencies to edges, and the
//! four ways a graph can be wrong (a duplicate name, a self dependency, an unknown dependency, a
//! cycle). Validation ([`crate::factfile`]) and [`crate::dag::Plan::try_new`] report
//! [`Graph::check`]'s first problem; planning builds on the graph [`Graph::resolve`] (the same
//! resolution, without the cycle search) gives. So they cannot disagree about what a dependency
//! means.
//!
//! This module knows task names and dependency lists only, not the factfile's types: the arrows
//! go `factfile → graph` and `dag → graph`, never back.

use std::collections::hash_map::Entry;
use std::collections::HashSet;

use petgraph::graph::{DiGraph, NodeIndex};
use rustc_hash::FxHashMap;

/// Index of a task: its position in the factfile (or in a plan, for a plan's own graph).
pub type TaskId = u32;

/// What is wrong with a graph. The texts are the validation errors' (after Factotum's
/// `'<path>' is not a valid factotum factfile: ` prefix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("the task name '{0}' is used by more than one task")]
    DuplicateName(String),
    #[error("the task '{0}' depends on itself")]
    SelfDependency(String),
    #[error("the task '{task}' depends on '{dependency}', which is not a task in this factfile")]
    UnknownDependency { task: String, dependency: String },
    /// The tasks of one cycle, in dependency order, starting from the earliest declared.
    #[error("the tasks form a cycle: {}", cycle_text(.0))]
    Cycle(Vec<String>),
}

/// `'a' -> 'b' -> 'a'`.
fn cycle_text(names: &[String]) -> String {
    let mut parts: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    if let Some(first) = parts.first().cloned() {
        parts.push(first);
    }
    parts.join(" -> ")
}

/// Tasks and their dependency edges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Graph {
    /// `deps[t]`: the tasks `t` depends on, in the order it names them.
    pub deps: Vec<Vec<TaskId>>,
}

impl Graph {
    /// Resolves `tasks` (each with a name and the names it depends on) and says whether the
    /// graph is valid: the first problem, in the order validation has always reported them (every
    /// duplicate name first, then each task's dependencies in order: itself, then unknown names),
    /// else a cycle if there is one.
    pub fn check<T>(
        tasks: &[T],
        name: impl Fn(&T) -> &str,
        depends_on: impl Fn(&T) -> &[String],
    ) -> Result<Graph, GraphError> {
        let (graph, problem) = Self::resolve(tasks, &name, depends_on);
        if let Some(e) = problem {
            return Err(e);
        }
        match graph.cycle() {
            Some(cycle) => Err(GraphError::Cycle(
                cycle
                    .iter()
                    .map(|&t| name(&tasks[t as usize]).to_string())
                    .collect(),
            )),
            None => Ok(graph),
        }
    }

    /// Resolves `tasks` and returns the graph with its first problem other than a cycle (which
    /// [`Graph::check`] looks for). Planning a validated factfile needs no more.
    ///
    /// The graph is usable even with a problem: a duplicate name means its first task, and self
    /// and unknown dependencies are left out. Only validated factfiles are planned, so this
    /// leniency only keeps planning a hand-built factfile from panicking.
    pub fn resolve<T>(
        tasks: &[T],
        name: impl Fn(&T) -> &str,
        depends_on: impl Fn(&T) -> &[String],
    ) -> (Graph, Option<GraphError>) {
        let mut problem = None;
        let mut index: FxHashMap<&str, TaskId> = FxHashMap::default();
        index.reserve(tasks.len());
        for (i, t) in tasks.iter().enumerate() {
            let n = name(t);
            match index.entry(n) {
                Entry::Occupied(_) => {
                    problem.get_or_insert_with(|| GraphError::DuplicateName(n.to_string()));
                }
                Entry::Vacant(v) => {
                    v.insert(i as TaskId);
                }
            }
        }
        let mut deps: Vec<Vec<TaskId>> = Vec::with_capacity(tasks.len());
        for t in tasks {
            let (n, named) = (name(t), depends_on(t));
            let mut mine = Vec::with_capacity(named.len());
            for d in named {
                if d == n {
                    problem.get_or_insert_with(|| GraphError::SelfDependency(n.to_string()));
                    continue;
                }
                match index.get(d.as_str()) {
                    Some(&i) => mine.push(i),
                    None => {
                        problem.get_or_insert_with(|| GraphError::UnknownDependency {
                            task: n.to_string(),
                            dependency: d.clone(),
                        });
                    }
                }
            }
            deps.push(mine);
        }
        (Graph { deps }, problem)
    }

    pub fn len(&self) -> usize {
        self.deps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deps.is_empty()
    }

    /// `children[t]`: the tasks depending on `t`, in task order (once per naming).
    pub fn children(&self) -> Vec<Vec<TaskId>> {
        let mut children: Vec<Vec<TaskId>> = vec![vec![]; self.len()];
        for (t, ds) in self.deps.iter().enumerate() {
            for &d in ds {
                children[d as usize].push(t as TaskId);
            }
        }
        children
    }

    /// The graph of the tasks marked in `keep`, renumbered in order; edges to tasks left out are
    /// dropped.
    pub fn induced(&self, keep: &[bool]) -> Graph {
        let mut new_id: Vec<Option<TaskId>> = vec![None; self.len()];
        let mut next = 0;
        for (t, id) in new_id.iter_mut().enumerate() {
            if keep[t] {
                *id = Some(next);
                next += 1;
            }
        }
        let deps = self
            .deps
            .iter()
            .enumerate()
            .filter(|(t, _)| keep[*t])
            .map(|(_, ds)| ds.iter().filter_map(|&d| new_id[d as usize]).collect())
            .collect();
        Graph { deps }
    }

    /// The tasks of one cycle, if there is one. A Kahn pass decides (over the children in one
    /// flat array: it needs them only for a moment, and 100,000 small vectors would outlive it
    /// in the allocator); petgraph's strongly connected components find the cycle, walked from
    /// its earliest task along dependency edges, the earliest next task first.
    fn cycle(&self) -> Option<Vec<TaskId>> {
        let n = self.len();
        let mut first = vec![0u32; n + 1];
        for ds in &self.deps {
            for &d in ds {
                first[d as usize + 1] += 1;
            }
        }
        for t in 0..n {
            first[t + 1] += first[t];
        }
        let mut flat = vec![0 as TaskId; first[n] as usize];
        let mut fill = first.clone();
        for (t, ds) in self.deps.iter().enumerate() {
            for &d in ds {
                flat[fill[d as usize] as usize] = t as TaskId;
                fill[d as usize] += 1;
            }
        }
        drop(fill);
        let sorted = topological_order(
            n,
            |t| self.deps[t].len(),
            |t| &flat[first[t] as usize..first[t + 1] as usize],
        );
        if sorted.len() == n {
            return None;
        }
        drop((flat, first, sorted));
        let mut g: DiGraph<usize, ()> = DiGraph::with_capacity(n, n);
        for i in 0..n {
            g.add_node(i);
        }
        for (t, ds) in self.deps.iter().enumerate() {
            for &d in ds {
                g.add_edge(NodeIndex::new(d as usize), NodeIndex::new(t), ());
            }
        }
        let scc = petgraph::algo::tarjan_scc(&g)
            .into_iter()
            .find(|c| c.len() > 1)?;
        let members: HashSet<NodeIndex> = scc.iter().copied().collect();
        let start = *scc.iter().min()?;
        let mut cycle = vec![start.index() as TaskId];
        let mut at = start;
        loop {
            let next = g.neighbors(at).filter(|n| members.contains(n)).min()?;
            if next == start || cycle.contains(&(next.index() as TaskId)) {
                break;
            }
            cycle.push(next.index() as TaskId);
            at = next;
        }
        Some(cycle)
    }
}

/// Kahn's order: every task after its dependencies, given each task's number of dependencies
/// and its children. Shorter than `n` when there is a cycle (its tasks never become ready).
pub fn topological_order<'g>(
    n: usize,
    dep_count: impl Fn(usize) -> usize,
    children: impl Fn(usize) -> &'g [TaskId],
) -> Vec<TaskId> {
    let mut unmet: Vec<u32> = (0..n).map(|t| dep_count(t) as u32).collect();
    let mut order: Vec<TaskId> = (0..n as TaskId)
        .filter(|&t| unmet[t as usize] == 0)
        .collect();
    order.reserve(n - order.len());
    let mut head = 0;
    while head < order.len() {
        let t = order[head] as usize;
        head += 1;
        for &c in children(t) {
            unmet[c as usize] -= 1;
            if unmet[c as usize] == 0 {
                order.push(c);
            }
        }
    }
    order
}

/// Marks every unmarked task below `roots` (not the roots themselves) in the graph whose edges
/// `children` gives, calling `newly` for each one it marks. Iterative: chains of any depth.
pub fn mark_below<'g>(
    children: impl Fn(TaskId) -> &'g Vec<TaskId>,
    roots: &[TaskId],
    marked: &mut [bool],
    mut newly: impl FnMut(TaskId),
) {
    let mut stack = roots.to_vec();
    while let Some(t) = stack.pop() {
        for &c in children(t) {
            if !marked[c as usize] {
                marked[c as usize] = true;
                newly(c);
                stack.push(c);
            }
        }
    }
}

#[cfg(test)]
mod tests;
