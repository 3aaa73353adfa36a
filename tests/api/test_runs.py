"""One run's life through the API: duplicates, cancelling, run-id prefixes, times and enums."""

import os
import time

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from factfiles import factfile, one_task, task
from factotum.jobs.v2 import jobs_pb2
from support import connected_agent, error_details, eventually, refused, run_in

S = jobs_pb2


def sleeping(marker):
    """Pids of processes whose command line is `sleep <marker>`."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"sleep", marker.encode()]:
            pids.append(int(pid))
    return pids


def test_a_duplicate_is_already_exists_naming_the_active_run_then_cancel_with_a_reason(procs):
    c = procs.coordinator()
    procs.agent("a", [c])
    connected_agent(c, "a")
    # A sleep no other process on the machine has: its process is found (and must go) by name.
    marker = f"30.{os.getpid()}{int(time.time() * 1000) % 100000}"
    request = S.SubmitRunRequest(factfile=one_task("sleeper", "sleep", marker), factfile_name="sleeper")
    first = c.jobs.SubmitRun(request, timeout=10)
    assert len(first.run_id) == 64 and first.job_reference and not first.existing
    eventually(lambda: sleeping(marker), timeout=20)
    running = run_in(c.jobs, first.run_id, S.RUN_STATE_RUNNING)
    assert [(t.state, t.agent, t.attempt) for t in running.tasks] == [(S.TASK_STATE_RUNNING, "a", 1)]
    time.sleep(0.3)
    later = c.jobs.GetRun(S.GetRunRequest(run_id=first.run_id), timeout=10)
    # A running run's duration is "so far": it grows.
    assert later.duration.ToNanoseconds() >= running.duration.ToNanoseconds() + 250_000_000, (
        running.duration,
        later.duration,
    )

    err = refused(c.jobs.SubmitRun, request, grpc.StatusCode.ALREADY_EXISTS)
    status, info, _ = error_details(err)
    assert info is not None, f"no ErrorInfo in {status}"
    assert (info.domain, info.reason) == ("factotum", "DUPLICATE_RUN")
    assert info.metadata["run_id"] == first.run_id

    c.jobs.CancelRun(S.CancelRunRequest(run_id=first.run_id, reason="api test says stop"), timeout=10)
    run = run_in(c.jobs, first.run_id, S.RUN_STATE_CANCELLED, timeout=20)
    assert "api test says stop" in run.cancel_reason, run
    assert run.tasks_done == run.task_count == 1, run
    # Cancelling kills the task on its agent.
    eventually(lambda: not sleeping(marker), timeout=20)
    # Cancelling a cancelled run again is what was asked: fine (a run that ended otherwise is
    # FAILED_PRECONDITION RUN_FINISHED: cli/tests/runs_list.rs).
    c.jobs.CancelRun(S.CancelRunRequest(run_id=first.run_id), timeout=10)
    # Over: the job may be submitted again.
    again = c.jobs.SubmitRun(request, timeout=10)
    assert again.run_id != first.run_id
    c.jobs.CancelRun(S.CancelRunRequest(run_id=again.run_id), timeout=10)
    run_in(c.jobs, again.run_id, S.RUN_STATE_CANCELLED, timeout=20)
    eventually(lambda: not sleeping(marker), timeout=20)


def test_a_unique_run_id_prefix_finds_the_run_and_a_short_one_is_not_found(procs):
    c = procs.coordinator()
    run_id = c.jobs.SubmitRun(S.SubmitRunRequest(factfile=one_task("prefix", "true"), dry_run=True), timeout=10).run_id
    for n in (8, 6):
        run = c.jobs.GetRun(S.GetRunRequest(run_id=run_id[:n]), timeout=10)
        assert run.run_id == run_id, f"GetRun({run_id[:n]!r})"
    err = refused(c.jobs.GetRun, S.GetRunRequest(run_id=run_id[:3]), grpc.StatusCode.NOT_FOUND)
    status, info, _ = error_details(err)
    assert info is not None and info.reason == "RUN_NOT_FOUND", status
    err = refused(c.jobs.GetRun, S.GetRunRequest(run_id="0" * 64), grpc.StatusCode.NOT_FOUND)
    assert error_details(err)[1].reason == "RUN_NOT_FOUND"


def test_times_are_well_known_types_and_states_are_enums(procs):
    c = procs.coordinator()
    procs.agent("a", [c])
    connected_agent(c, "a")
    ff = factfile(
        "three",
        task("first", "echo", "hi"),
        task("second", "exit", "3", depends_on=["first"]),
        task("third", "echo", "never", depends_on=["second"]),
    )
    before = time.time()
    run_id = c.jobs.SubmitRun(S.SubmitRunRequest(factfile=ff), timeout=10).run_id
    run = run_in(c.jobs, run_id, S.RUN_STATE_FAILED, timeout=30)
    after = time.time()

    assert isinstance(run.start_time, timestamp_pb2.Timestamp) and run.HasField("start_time")
    start = run.start_time.ToNanoseconds() / 1e9
    assert before - 5 <= start <= after + 5, f"start_time {run.start_time.ToJsonString()} is not now"
    assert isinstance(run.duration, duration_pb2.Duration) and run.HasField("duration")
    assert 0 <= run.duration.ToNanoseconds() / 1e9 <= after - before + 5, run.duration
    assert run.job_name == "three" and run.task_count == 3 and run.tasks_done == 3

    tasks = {t.name: t for t in run.tasks}
    assert [t.name for t in run.tasks] == ["first", "second", "third"]
    assert {n: S.TaskState.Name(t.state) for n, t in tasks.items()} == {
        "first": "TASK_STATE_SUCCEEDED",
        "second": "TASK_STATE_FAILED",
        "third": "TASK_STATE_SKIPPED",
    }
    assert tasks["first"].return_code == 0 and tasks["second"].return_code == 3
    assert not tasks["third"].HasField("return_code")
    for name in ("first", "second"):
        t = tasks[name]
        assert t.agent == "a" and t.attempt == 1, t
        assert t.HasField("started") and before - 5 <= t.started.ToNanoseconds() / 1e9 <= after + 5, t
        assert t.HasField("duration") and t.duration.ToNanoseconds() >= 0, t
    assert tasks["third"].attempt == 0

    # A finished run's watch answers with its end at once.
    events = list(c.jobs.WatchRun(S.WatchRunRequest(run_id=run_id[:8]), timeout=10))
    assert [e.WhichOneof("event") for e in events][-1:] == ["end"], events
    end = events[-1].end
    assert end.state == S.RUN_STATE_FAILED and end.first_failed == "second", end
    assert [(t.name, t.state) for t in end.tasks] == [(t.name, t.state) for t in run.tasks]
    assert isinstance(end.duration, duration_pb2.Duration) and end.HasField("duration")
