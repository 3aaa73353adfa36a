"""A flood of concurrent submissions (issue 12): a client firing far more large SubmitRun calls
at once than the coordinator admits gets each one answered — accepted (once), ALREADY_EXISTS
or RESOURCE_EXHAUSTED naming the limit, nothing else — while the coordinator's memory stays bounded and it goes on serving.
"""

import time

import grpc

from factfiles import factfile, task
from factotum.jobs.v2 import jobs_pb2
from support import error_details

CALLS = 1200
# Each submission carries this much factfile (a long command), ~300 MB in all.
PADDING = 256 * 1024


def rss_kib(pid, field):
    """`VmRSS` (now) or `VmHWM` (the peak) of `pid`, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_a_flood_of_submits_is_answered_and_memory_stays_bounded(procs):
    c = procs.coordinator("--max-pending-submits", "4", "--max-queued-calls", "8")
    pid = c.proc.pid
    before = rss_kib(pid, "VmRSS")
    # One job submitted again and again: each call costs what a submission costs up to the
    # engine (read, templated, planned, checked against the active runs), and only the first
    # is kept (the rest are ALREADY_EXISTS), so what the coordinator holds at the end is its
    # own, not the runs'. No agent: that one run waits.
    text = factfile("flood", task("t", "echo", "x" * PADDING))
    requests = [jobs_pb2.SubmitRunRequest(factfile=text) for _ in range(CALLS)]
    started = time.monotonic()
    futures = [c.jobs.SubmitRun.future(r, timeout=120) for r in requests]
    codes = {}
    for f in futures:
        try:
            f.result()
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
            if code == grpc.StatusCode.ALREADY_EXISTS:
                pass
            elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                _, info, _ = error_details(e)
                assert info.reason == "LIMIT_EXCEEDED", info
                assert info.metadata["limit"] == "max_pending_submits", info
            else:
                raise AssertionError(f"{code}: {e.details()}")
        codes[code] = codes.get(code, 0) + 1
    took = time.monotonic() - started
    peak, after = rss_kib(pid, "VmHWM"), rss_kib(pid, "VmRSS")
    sent_mib = CALLS * PADDING / 2**20
    print(
        f"{CALLS} submits ({sent_mib:.0f} MiB) in {took:.1f}s: {codes}; RSS {before // 1024} MiB "
        f"before, peak {peak // 1024} MiB, {after // 1024} MiB after"
    )
    assert codes.get(grpc.StatusCode.OK, 0) == 1, codes
    assert codes.get(grpc.StatusCode.ALREADY_EXISTS, 0) > 0, codes
    assert codes.get(grpc.StatusCode.RESOURCE_EXHAUSTED, 0) > 0, codes
    # Bounded: the peak stays well under what was sent at it (a coordinator that buffered every
    # submission, or kept them, would hold all of it).
    assert (peak - before) / 1024 < sent_mib / 2, (before, peak, sent_mib)
    # Still serving, promptly.
    started = time.monotonic()
    c.jobs.ListRuns(jobs_pb2.ListRunsRequest(), timeout=5)
    assert time.monotonic() - started < 2
    assert c.proc.poll() is None
