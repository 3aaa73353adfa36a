"""Real processes for the API tests: coordinators, agents and etcd on 127.0.0.1, ephemeral
ports, each stopped when its test ends (and, as a last resort, when the interpreter exits).

The generated stubs (`factotum.jobs.v2.jobs_pb2*`) are on PYTHONPATH: scripts/api-tests.sh
generates them from proto/factotum/jobs/v2/jobs.proto before running pytest.
"""

import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from factotum.jobs.v2 import jobs_pb2, jobs_pb2_grpc

BIN_DIR = os.environ.get("FACTOTUM_BIN_DIR") or os.path.join(
    os.path.dirname(__file__), "..", "..", "target", "debug"
)

# The health service name SERVING only on the leader.
LEADER_HEALTH = "factotum.v1.Leader"

# Every process a test started, so none outlives the test run even if a teardown is skipped.
_LIVE = []


def _kill_all():
    for p in list(_LIVE):
        _stop(p, grace=2)


def _interrupted(*_):
    raise KeyboardInterrupt("SIGTERM")


atexit.register(_kill_all)
# SIGTERM (say, a CI timeout) ends the run through its teardowns and atexit, not around them.
signal.signal(signal.SIGTERM, _interrupted)


def _stop(proc, grace=10.0):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc in _LIVE:
        _LIVE.remove(proc)


def eventually(what, timeout=20.0, interval=0.05):
    """Calls `what` until it returns something truthy; fails the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {getattr(what, '__name__', what)}")
        time.sleep(interval)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(name):
    path = os.path.join(BIN_DIR, name)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run 'cargo build --workspace --bins' first")
    return path


class Proc:
    """One child process, its stdout and stderr in files under the test's tmp dir."""

    def __init__(self, name, argv, tmp_path):
        self.name = name
        self.out = tmp_path / f"{name}.out"
        self.log = tmp_path / f"{name}.log"
        with open(self.out, "wb") as out, open(self.log, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        _LIVE.append(self.proc)

    def stop(self, grace=10.0):
        _stop(self.proc, grace)

    def tail(self, n=30):
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


class Coordinator(Proc):
    """`factotum-coordinator --listen 127.0.0.1:0`, its address read from its
    `listening on ADDR` line, and a channel with the Jobs stub."""

    count = 0

    def __init__(self, tmp_path, *args):
        Coordinator.count += 1
        super().__init__(
            f"coordinator{Coordinator.count}",
            [binary("factotum-coordinator"), "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", *args],
            tmp_path,
        )

        def listening():
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            for line in self.out.read_text().splitlines():
                if line.startswith("listening on "):
                    return line[len("listening on "):].strip()
            return None

        self.addr = eventually(listening, timeout=20)
        self.url = f"http://{self.addr}"
        self.channel = grpc.insecure_channel(self.addr)
        self.jobs = jobs_pb2_grpc.JobsStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        # Ready: a memory-store coordinator leads from the start, but it serves a moment before
        # its engine is in place (then it answers UNAVAILABLE "no leader is elected yet"), so
        # wait for the leader health status, as a load balancer would. One with etcd: its server.
        service = "" if "--etcd" in args else LEADER_HEALTH
        ready = lambda: self.serving(service)  # noqa: E731
        ready.__name__ = f"{self.name} SERVING {service!r} (health)"
        eventually(ready, timeout=20)

    def serving(self, service):
        """Whether the standard health service says SERVING for `service`."""
        try:
            answer = self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        except grpc.RpcError:
            return False
        return answer.status == health_pb2.HealthCheckResponse.SERVING

    def stop(self, grace=10.0):
        self.channel.close()
        super().stop(grace)

    def agents(self):
        return self.jobs.ListAgents(jobs_pb2.ListAgentsRequest(), timeout=10).agents


class Agent(Proc):
    """`factotum-agent --name NAME` given these coordinators, in order."""

    def __init__(self, tmp_path, name, coordinators, *args):
        # Full task logs under the test's tmp dir, not the user's ~/.local/state.
        argv = [binary("factotum-agent"), "--name", name, "--drain-grace", "1s",
                "--log-dir", str(tmp_path / f"logs-{name}")]
        for c in coordinators:
            argv += ["--coordinator", c]
        super().__init__(f"agent-{name}", [*argv, *args], tmp_path)


class Etcd(Proc):
    """One etcd member: ephemeral client and peer ports, a data dir under the test's tmp dir.
    A test that needs it fails (never skips) when etcd is not installed."""

    def __init__(self, tmp_path):
        exe = shutil.which("etcd")
        if exe is None:
            pytest.fail("etcd is not installed (apt-get install etcd-server; `make test` does it)")
        self.client_port, peer = free_port(), free_port()
        while peer == self.client_port:
            peer = free_port()
        self.endpoint = f"http://127.0.0.1:{self.client_port}"
        p = f"http://127.0.0.1:{peer}"
        super().__init__(
            "etcd",
            [
                exe,
                "--name", "test",
                "--data-dir", str(tmp_path / "etcd-data"),
                "--listen-client-urls", self.endpoint,
                "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", p,
                "--initial-advertise-peer-urls", p,
                "--initial-cluster", f"test={p}",
            ],
            tmp_path,
        )

        def healthy():
            if self.proc.poll() is not None:
                pytest.fail(f"etcd exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as r:
                    return b'"health":"true"' in r.read()
            except OSError:
                return False

        eventually(healthy, timeout=20, interval=0.1)


@pytest.fixture
def procs(tmp_path):
    """Starts processes for one test and stops them all (agents first) when it ends; their logs'
    tails are printed, so a failing test shows them."""
    started = []

    class Starter:
        def coordinator(self, *args):
            c = Coordinator(tmp_path, *args)
            started.append(c)
            return c

        def agent(self, name, coordinators, *args):
            a = Agent(tmp_path, name, [c.url if isinstance(c, Coordinator) else c for c in coordinators], *args)
            started.append(a)
            return a

        def etcd(self):
            e = Etcd(tmp_path)
            started.append(e)
            return e

    yield Starter()
    order = sorted(started, key=lambda p: {Agent: 0, Coordinator: 1, Etcd: 2}[type(p)])
    for p in order:
        p.stop()
    for p in order:
        print(f"--- {p.name} (exit {p.proc.returncode}), last lines of {p.log}:\n{p.tail()}")


def connected_agent(coordinator, name, timeout=20):
    """Waits until `name` is connected to `coordinator`."""

    def there():
        try:
            return any(a.agent_id == name and a.connected for a in coordinator.agents())
        except grpc.RpcError:
            return False

    there.__name__ = f"agent {name} connected to {coordinator.addr}"
    eventually(there, timeout=timeout, interval=0.1)


def error_details(err):
    """The google.rpc.Status of a failed call (its `grpc-status-details-bin` trailer), decoded as
    any client would with grpc_status, and its ErrorInfo and BadRequest details (None if absent)."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(err)
    assert status is not None, f"no google.rpc.Status in the trailers of {err.code()}: {err.details()!r}"
    assert status.code == err.code().value[0]
    assert status.message == err.details()
    info = bad = None
    for any_ in status.details:
        if any_.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_.Unpack(info)
        elif any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_.Unpack(bad)
    return status, info, bad


def refused(call, request, code, timeout=10):
    """Makes the call, which must fail with `code`; returns the grpc.RpcError."""
    try:
        answer = call(request, timeout=timeout)
    except grpc.RpcError as err:
        assert err.code() == code, f"expected {code}, got {err.code()}: {err.details()}"
        return err
    pytest.fail(f"expected {code}, the call succeeded: {answer}")


def run_in(jobs, run_id, *states, timeout=30):
    """Waits until GetRun shows the run in one of `states`; returns the Run."""
    deadline = time.monotonic() + timeout
    while True:
        run = jobs.GetRun(jobs_pb2.GetRunRequest(run_id=run_id), timeout=10)
        if run.state in states:
            return run
        if time.monotonic() > deadline:
            names = ", ".join(jobs_pb2.RunState.Name(s) for s in states)
            pytest.fail(f"run {run_id} not in {names} after {timeout}s; last seen:\n{run}")
        time.sleep(0.05)
