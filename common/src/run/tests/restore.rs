//! A run rebuilt from what a coordinator recorded of it ([`RunState::restore`]), as a new leader
//! does: it goes on where it was.

use super::*;

/// Every task as a coordinator records it, for [`RunState::restore`].
pub(super) fn recorded(run: &RunState) -> Vec<Option<RestoredTask>> {
    run.tasks()
        .iter()
        .map(|r| {
            Some(RestoredTask {
                state: r.state,
                attempt: r.attempt,
                started: r.started,
                duration: r.duration,
                stdout: r.stdout.as_str().to_string(),
                stderr: r.stderr.as_str().to_string(),
                return_code: r.return_code,
                error_message: r.error_message.clone(),
                retry_at: r.retry_at,
            })
        })
        .collect()
}

#[test]
fn a_restored_run_continues_where_it_was() {
    let mut h = Harness::new(&[
        ("a", &[]),
        ("b", &["a"]),
        ("c", &["a"]),
        ("d", &["b", "c"]),
        ("x", &[]),
    ]);
    h.lease_ready();
    h.finish("a", 0);
    h.lease_ready();
    h.finish("x", 7); // failed

    // Record every task as a coordinator would, then rebuild on a "new leader".
    let records = recorded(&h.run);
    let plan = Arc::clone(h.run.plan());
    let mut restored = RunState::restore(
        plan,
        t(0),
        RunOptions::default(),
        JobState::Running,
        None,
        records,
    );
    assert_eq!(restored.task(h.id("b")).unwrap().state, TaskState::Running);
    assert_eq!(restored.first_failed(), Some(h.id("x")));
    assert!(restored.ready().is_empty(), "b and c run; d waits for them");
    // The running attempts' results are accepted as before; d becomes ready.
    for name in ["b", "c"] {
        let id = h.id(name);
        let attempt = restored.task(id).unwrap().attempt;
        restored.apply(
            Event::AttemptEnded {
                task: id,
                attempt,
                result: result(Outcome::Exited(0), "", Duration::ZERO),
            },
            t(500),
        );
    }
    assert_eq!(restored.ready(), [h.id("d")]);
    let lease = restored.apply(
        Event::Lease {
            tasks: vec![h.id("d")],
        },
        t(600),
    );
    assert!(lease.contains(&Action::Dispatch {
        task: h.id("d"),
        attempt: 1
    }));
    let end = restored.apply(
        Event::AttemptEnded {
            task: h.id("d"),
            attempt: 1,
            result: result(Outcome::Exited(0), "", Duration::ZERO),
        },
        t(700),
    );
    assert_eq!(
        finished_state(&end),
        Some(JobState::Failed),
        "x failed before the failover"
    );
}

#[test]
fn a_restored_run_names_the_task_that_failed_first_in_time() {
    let mut h = Harness::new(&[("early in the list", &[]), ("later in the list", &[])]);
    h.lease_ready();
    let end = |h: &mut Harness, name: &str, ms: u64| {
        let task = h.id(name);
        h.apply(Event::AttemptEnded {
            task,
            attempt: 1,
            result: result(Outcome::Exited(1), "", Duration::from_millis(ms)),
        });
    };
    end(&mut h, "later in the list", 5);
    end(&mut h, "early in the list", 500);
    assert_eq!(h.run.first_failed(), Some(h.id("later in the list")));
    let restored = RunState::restore(
        Arc::clone(h.run.plan()),
        t(0),
        RunOptions::default(),
        JobState::Failed,
        None,
        recorded(&h.run),
    );
    assert_eq!(restored.first_failed(), h.run.first_failed());
}
