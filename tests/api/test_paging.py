"""ListRuns pages through many runs, newest first, without their tasks, and filters them."""

import time

import grpc
from google.protobuf import timestamp_pb2

from factfiles import factfile, one_task, task
from factotum.jobs.v2 import jobs_pb2
from support import connected_agent, error_details, eventually, refused, run_in

S = jobs_pb2
# More than the 1,000 finished runs a coordinator holds whole: the older ones are listed from a
# line each and read back from the store for GetRun.
RUNS = 2000


def all_pages(jobs, page_size, **filters):
    """Every run ListRuns gives with these filters, page by page, and the pages' sizes."""
    runs, sizes, token = [], [], ""
    for _ in range(RUNS + 10):
        page = jobs.ListRuns(S.ListRunsRequest(page_size=page_size, page_token=token, **filters), timeout=10)
        runs.extend(page.runs)
        sizes.append(len(page.runs))
        token = page.next_page_token
        if not token:
            return runs, sizes
    raise AssertionError("ListRuns never gave an empty next_page_token")


def test_list_runs_pages_filters_and_refuses_junk_tokens(procs):
    c = procs.coordinator()
    procs.agent("a", [c])
    connected_agent(c, "a")

    ff = {"alpha": factfile("alpha", task("one", "true"), task("two", "true", depends_on=["one"])),
          "beta": one_task("beta", "true")}
    submitted = []
    for i in range(RUNS):
        name = "alpha" if i % 3 == 0 else "beta"
        r = c.jobs.SubmitRun(
            S.SubmitRunRequest(factfile=ff[name], dry_run=True, allow_concurrent=True, tags={"i": str(i)}),
            timeout=10,
        )
        submitted.append((r.run_id, name))
    ids = [r for r, _ in submitted]
    assert len(set(ids)) == RUNS

    def all_succeeded():
        runs, _ = all_pages(c.jobs, 1000, states=[S.RUN_STATE_SUCCEEDED])
        return len(runs) == RUNS

    eventually(all_succeeded, timeout=60, interval=0.5)
    # One run that fails, so the state filter has something to leave out.
    failing = c.jobs.SubmitRun(S.SubmitRunRequest(factfile=one_task("gamma", "false")), timeout=10).run_id
    run_in(c.jobs, failing, S.RUN_STATE_FAILED)
    ids.append(failing)
    # And one cancelled while it waits for an agent no one has.
    cancelled = c.jobs.SubmitRun(
        S.SubmitRunRequest(factfile=one_task("delta", "true"), constraints=[S.Constraint(host="nowhere.invalid")]),
        timeout=10,
    ).run_id
    waiting = run_in(c.jobs, cancelled, S.RUN_STATE_WAITING)
    assert "nowhere.invalid" in waiting.waiting_reason, waiting
    c.jobs.CancelRun(S.CancelRunRequest(run_id=cancelled, reason="never placed"), timeout=10)
    run_in(c.jobs, cancelled, S.RUN_STATE_CANCELLED)
    ids.append(cancelled)

    # Every run exactly once, 7 a page, newest first, none carrying its tasks.
    runs, sizes = all_pages(c.jobs, 7)
    listed = [r.run_id for r in runs]
    assert len(listed) == len(set(listed)), "a run listed twice"
    assert set(listed) == set(ids)
    assert sizes == [7] * (len(ids) // 7) + ([len(ids) % 7] if len(ids) % 7 else []), sizes
    starts = [r.start_time.ToNanoseconds() for r in runs]
    assert starts == sorted(starts, reverse=True), "pages are not newest first"
    # Submitted one after another, so listed in the reverse order.
    assert listed == ids[::-1], "not newest first"
    oldest = c.jobs.GetRun(S.GetRunRequest(run_id=ids[0]), timeout=10)
    assert [t.state for t in oldest.tasks] == [S.TASK_STATE_SUCCEEDED] * oldest.task_count, oldest
    for r in runs:
        assert len(r.tasks) == 0, f"ListRuns gave {r.run_id}'s tasks"
        assert r.task_count == (2 if r.job_name == "alpha" else 1), r
        assert r.HasField("start_time") and r.job_name in ("alpha", "beta", "gamma", "delta")

    # Filters: job name, states, tags, start times.
    alphas, _ = all_pages(c.jobs, 7, job_name="alpha")
    assert sorted(r.run_id for r in alphas) == sorted(i for i, n in submitted if n == "alpha")
    succeeded, _ = all_pages(c.jobs, 50, states=[S.RUN_STATE_SUCCEEDED])
    assert set(r.run_id for r in succeeded) == set(ids) - {failing, cancelled}
    assert all(r.state == S.RUN_STATE_SUCCEEDED for r in succeeded)
    failed, _ = all_pages(c.jobs, 50, states=[S.RUN_STATE_FAILED])
    assert [(r.run_id, r.state) for r in failed] == [(failing, S.RUN_STATE_FAILED)]
    gone, _ = all_pages(c.jobs, 50, states=[S.RUN_STATE_CANCELLED])
    assert [(r.run_id, r.state) for r in gone] == [(cancelled, S.RUN_STATE_CANCELLED)]
    assert "never placed" in gone[0].cancel_reason, gone[0]
    either, _ = all_pages(c.jobs, 1000, states=[S.RUN_STATE_FAILED, S.RUN_STATE_SUCCEEDED])
    assert len(either) == len(ids) - 1
    beta_succeeded, _ = all_pages(c.jobs, 1000, job_name="beta", states=[S.RUN_STATE_SUCCEEDED])
    assert len(beta_succeeded) == RUNS - len(alphas)
    tagged, _ = all_pages(c.jobs, 7, tags={"i": "42"})
    assert [r.run_id for r in tagged] == [ids[42]]

    future = timestamp_pb2.Timestamp()
    future.FromSeconds(int(time.time()) + 3600)
    page = c.jobs.ListRuns(S.ListRunsRequest(started_after=future), timeout=10)
    assert list(page.runs) == [] and page.next_page_token == ""
    past = timestamp_pb2.Timestamp()
    past.FromSeconds(int(time.time()) - 3600)
    assert len(all_pages(c.jobs, 1000, started_after=past)[0]) == len(ids)
    assert all_pages(c.jobs, 1000, started_before=past)[0] == []
    # started_after the 100th-newest run's start: exactly the 99 newer ones (start times differ).
    pivot = runs[99].start_time
    newer, _ = all_pages(c.jobs, 1000, started_after=pivot)
    assert {r.run_id for r in newer} == {r.run_id for r in runs[:99] if r.start_time.ToNanoseconds() > pivot.ToNanoseconds()}

    for junk in ("junk", "not-a-number:abc", "::"):
        err = refused(c.jobs.ListRuns, S.ListRunsRequest(page_token=junk), grpc.StatusCode.INVALID_ARGUMENT)
        status, info, bad = error_details(err)
        assert info is not None and (info.domain, info.reason) == ("factotum", "INVALID_ARGUMENT"), status
        assert bad is not None and [v.field for v in bad.field_violations] == ["page_token"], status
