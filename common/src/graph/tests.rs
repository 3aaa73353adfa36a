use super::*;

/// (name, dependencies) pairs.
fn resolve(spec: &[(&str, &[&str])]) -> (Graph, Option<GraphError>) {
    let tasks: Vec<(String, Vec<String>)> = spec
        .iter()
        .map(|(n, ds)| (n.to_string(), ds.iter().map(|d| d.to_string()).collect()))
        .collect();
    Graph::resolve(&tasks, |t| &t.0, |t| &t.1)
}

/// What validation says: the first problem, cycles included.
fn problem(spec: &[(&str, &[&str])]) -> Option<GraphError> {
    let tasks: Vec<(String, Vec<String>)> = spec
        .iter()
        .map(|(n, ds)| (n.to_string(), ds.iter().map(|d| d.to_string()).collect()))
        .collect();
    Graph::check(&tasks, |t| &t.0, |t| &t.1).err()
}

#[test]
fn a_valid_graph_resolves_forward_references_and_orders_dependencies_first() {
    let (g, e) = resolve(&[("b", &["a"]), ("a", &[]), ("c", &["b", "a"])]);
    assert_eq!(e, None);
    assert_eq!(g.deps, vec![vec![1], vec![], vec![0, 1]]);
    assert_eq!(g.children(), vec![vec![2], vec![0, 2], vec![]]);
    let children = g.children();
    let order = topological_order(3, |t| g.deps[t].len(), |t| &children[t]);
    assert_eq!(order, vec![1, 0, 2]);
}

#[test]
fn a_duplicate_name_is_reported_before_any_dependency_problem() {
    assert_eq!(
        problem(&[("x", &["nope"]), ("a", &[]), ("a", &[])]),
        Some(GraphError::DuplicateName("a".into()))
    );
}

#[test]
fn a_self_dependency_is_named() {
    assert_eq!(
        problem(&[("a", &[]), ("b", &["a", "b"])]),
        Some(GraphError::SelfDependency("b".into()))
    );
}

#[test]
fn an_unknown_dependency_is_named_with_its_task() {
    assert_eq!(
        problem(&[("a", &["zz"])]),
        Some(GraphError::UnknownDependency {
            task: "a".into(),
            dependency: "zz".into()
        })
    );
}

#[test]
fn dependency_problems_come_in_task_order_then_dependency_order() {
    assert_eq!(
        problem(&[("a", &["zz", "a"]), ("b", &["b"])]),
        Some(GraphError::UnknownDependency {
            task: "a".into(),
            dependency: "zz".into()
        })
    );
}

#[test]
fn a_cycle_is_walked_from_its_earliest_task() {
    let e = problem(&[("d", &[]), ("a", &["c"]), ("b", &["a"]), ("c", &["b"])]).unwrap();
    assert_eq!(
        e,
        GraphError::Cycle(vec!["a".into(), "b".into(), "c".into()])
    );
    assert_eq!(
        e.to_string(),
        "the tasks form a cycle: 'a' -> 'b' -> 'c' -> 'a'"
    );
    let (g, e) = resolve(&[("x", &["y"]), ("y", &["x"]), ("z", &[])]);
    assert_eq!(e, None, "resolving alone does not look for cycles");
    let children = g.children();
    let order = topological_order(3, |t| g.deps[t].len(), |t| &children[t]);
    assert_eq!(order, vec![2], "tasks on a cycle never become ready");
}

#[test]
fn a_cycle_is_looked_for_only_when_nothing_else_is_wrong() {
    assert_eq!(
        problem(&[("x", &["y"]), ("y", &["x"]), ("z", &["nope"])]),
        Some(GraphError::UnknownDependency {
            task: "z".into(),
            dependency: "nope".into()
        })
    );
}

#[test]
fn a_graph_with_a_problem_is_still_usable() {
    let (g, e) = resolve(&[("a", &["a", "zz"]), ("b", &["a"]), ("a", &[])]);
    assert!(e.is_some());
    // The self and unknown dependencies are left out; `a` means the first `a`.
    assert_eq!(g.deps, vec![vec![], vec![0], vec![]]);
}

#[test]
fn an_induced_graph_renumbers_and_drops_edges_to_tasks_left_out() {
    let (g, _) = resolve(&[("a", &[]), ("b", &["a"]), ("c", &["b", "a"]), ("d", &["c"])]);
    let sub = g.induced(&[false, true, true, true]);
    assert_eq!(sub.deps, vec![vec![], vec![0], vec![1]]);
}

#[test]
fn mark_below_walks_every_descendant_once() {
    let (g, _) = resolve(&[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])]);
    let children = g.children();
    let mut marked = vec![false; 4];
    let mut seen = vec![];
    mark_below(
        |t| &children[t as usize],
        &[0],
        &mut marked,
        |t| seen.push(t),
    );
    seen.sort();
    assert_eq!(seen, vec![1, 2, 3]);
    assert!(!marked[0]);
}
