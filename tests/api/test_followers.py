"""A client pointed at a follower (etcd: two coordinators, one leads): the proto says any
coordinator answers, a follower forwarding the call to the leader and naming it in the
`factotum-leader` response header. Needs etcd: fails (never skips) without it."""

import time

import grpc

from factfiles import factfile, task
from factotum.jobs.v2 import jobs_pb2
from support import LEADER_HEALTH, connected_agent, error_details, eventually, refused

S = jobs_pb2


def serving_as_leader(c):
    return c.serving(LEADER_HEALTH)


def leader_header(call):
    values = [v for k, v in call.initial_metadata() if k == "factotum-leader"]
    assert values, f"no factotum-leader response header: {call.initial_metadata()}"
    return values[0]


def headers(err):
    return [*(err.initial_metadata() or ()), *(err.trailing_metadata() or ())]


def while_no_leader_known(call, request, timeout=15):
    """Makes the call (with_call), again while it is refused the way the proto says a
    coordinator refuses while no leader is known: UNAVAILABLE with `factotum-leader` empty."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call.with_call(request, timeout=20)
        except grpc.RpcError as err:
            named = [v for k, v in headers(err) if k == "factotum-leader" and v]
            if err.code() != grpc.StatusCode.UNAVAILABLE or named or time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def test_a_follower_forwards_submit_get_and_watch_to_the_leader(procs):
    etcd = procs.etcd()
    coordinators = [procs.coordinator("--etcd", etcd.endpoint, "--lease-ttl", "2s") for _ in range(2)]

    def one_leader():
        leading = [c for c in coordinators if serving_as_leader(c)]
        return leading[0] if len(leading) == 1 else None

    leader = eventually(one_leader, timeout=30, interval=0.1)
    follower = next(c for c in coordinators if c is not leader)
    assert not serving_as_leader(follower)
    # The follower knows who leads (an agent given both addresses follows it there).
    procs.agent("a", coordinators)
    connected_agent(leader, "a", timeout=30)

    ff = factfile("via follower", task("greet", "echo", "hello from the leader"))
    submitted, call = while_no_leader_known(follower.jobs.SubmitRun, S.SubmitRunRequest(factfile=ff))
    assert leader.addr in leader_header(call) and follower.addr not in leader_header(call)
    assert len(submitted.run_id) == 64

    events = follower.jobs.WatchRun(S.WatchRunRequest(run_id=submitted.run_id), timeout=30)
    assert leader.addr in leader_header(events)
    lines, end = [], None
    for ev in events:
        kind = ev.WhichOneof("event")
        if kind == "output":
            lines.append(ev.output.line)
        elif kind == "end":
            end = ev.end
            break
    assert end is not None, "WatchRun ended without a RunEnd"
    assert end.state == S.RUN_STATE_SUCCEEDED, end
    assert [t.state for t in end.tasks] == [S.TASK_STATE_SUCCEEDED]

    run, call = follower.jobs.GetRun.with_call(S.GetRunRequest(run_id=submitted.run_id[:10]), timeout=20)
    assert leader.addr in leader_header(call)
    assert run.run_id == submitted.run_id and run.state == S.RUN_STATE_SUCCEEDED
    assert [(t.name, t.state, t.agent) for t in run.tasks] == [("greet", S.TASK_STATE_SUCCEEDED, "a")]
    # The leader answers the same, with no header pointing elsewhere.
    assert leader.jobs.GetRun(S.GetRunRequest(run_id=submitted.run_id), timeout=10) == run

    # Refusals come back through the follower with the leader's error details intact.
    err = refused(follower.jobs.SubmitRun, S.SubmitRunRequest(factfile="{"), grpc.StatusCode.INVALID_ARGUMENT)
    status, info, bad = error_details(err)
    assert info is not None and (info.domain, info.reason) == ("factotum", "INVALID_FACTFILE"), status
    assert bad is not None and [v.field for v in bad.field_violations] == ["factfile"], status
    named = [v for k, v in headers(err) if k == "factotum-leader"]
    assert named and all(leader.addr in v for v in named), headers(err)
    err = refused(follower.jobs.GetRun, S.GetRunRequest(run_id="0" * 64), grpc.StatusCode.NOT_FOUND)
    assert error_details(err)[1].reason == "RUN_NOT_FOUND"

    # ListRuns through the follower pages the leader's runs, newest first, each once.
    more = [
        follower.jobs.SubmitRun(S.SubmitRunRequest(factfile=ff, dry_run=True, allow_concurrent=True), timeout=20).run_id
        for _ in range(2)
    ]
    listed, token = [], ""
    for _ in range(10):
        page, call = follower.jobs.ListRuns.with_call(S.ListRunsRequest(page_size=1, page_token=token), timeout=20)
        assert leader.addr in leader_header(call)
        assert len(page.runs) == 1 and not page.runs[0].tasks and page.runs[0].task_count == 1
        listed.append(page.runs[0].run_id)
        token = page.next_page_token
        if not token:
            break
    assert listed == [*reversed(more), submitted.run_id]


def test_a_watch_through_a_follower_survives_the_leader_being_killed(procs):
    """The follower resumes the watch at the next leader by itself: a client that only reads its
    stream sees a Gap and a Snapshot, then the run's end."""
    etcd = procs.etcd()
    coordinators = [procs.coordinator("--etcd", etcd.endpoint, "--lease-ttl", "2s") for _ in range(2)]

    def one_leader():
        leading = [c for c in coordinators if serving_as_leader(c)]
        return leading[0] if len(leading) == 1 else None

    leader = eventually(one_leader, timeout=30, interval=0.1)
    follower = next(c for c in coordinators if c is not leader)
    procs.agent("a", coordinators)
    connected_agent(leader, "a", timeout=30)
    ff = factfile(
        "outlives its leader",
        task("first", "sh", "-c", "sleep 1; echo first-out"),
        task("second", "sh", "-c", "sleep 5; echo second-out", depends_on=["first"]),
    )
    submitted, _ = while_no_leader_known(follower.jobs.SubmitRun, S.SubmitRunRequest(factfile=ff))
    events = follower.jobs.WatchRun(S.WatchRunRequest(run_id=submitted.run_id), timeout=60)
    kinds, end, killed = [], None, False
    for ev in events:
        kind = ev.WhichOneof("event")
        kinds.append(kind)
        if not killed and kind == "tasks" and any(
            c.name == "second" and c.current == S.TASK_STATE_RUNNING for c in ev.tasks.changes
        ):
            leader.proc.kill()  # kill -9: the leader's stream to the follower breaks
            leader.proc.wait()
            killed = True
        if kind == "snapshot":
            assert {t.name for t in ev.snapshot.tasks} == {"first", "second"}
        if kind == "end":
            end = ev.end
            break
    assert killed, kinds
    assert "gap" in kinds and "snapshot" in kinds, kinds
    assert kinds.index("gap") < kinds.index("snapshot") < kinds.index("end"), kinds
    assert end is not None and end.state == S.RUN_STATE_SUCCEEDED, (kinds, end)
