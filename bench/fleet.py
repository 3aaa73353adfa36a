#!/usr/bin/env python3
"""Fleet benchmarks (issue 3): hop latency and throughput through a coordinator and agents on
loopback, and the coordinator's cost with thousands of connected (simulated) agents.

Usage: python3 bench/fleet.py [--runs N] [--bin DIR] [--scale 1000,5000]
       python3 bench/fleet.py --etcd --only failover [--lease-ttl default,2]
Needs the release binaries: cargo build --release --workspace --bins

Failover (with --etcd): kill -9 of the leader of three coordinators; it ends at the first lease the
agent accepts with the new leader's epoch (the agent's debug line `lease accepted`), not at the
first spawn after the kill, which may be a task the dead leader leased.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))


# With --policies every task has a timeout and a retry (extended schema): every run then keeps
# timers, which is what that flag measures the cost of.
POLICIES = False
# Every task's command (--command): `true` runs without a shell on a plain agent (a simple
# command); one with shell syntax goes through `sh -c` everywhere.
COMMAND = "true"


def factfile(path, name, tasks):
    def task(n, d):
        t = {"name": n, "executor": "shell", "command": COMMAND, "arguments": [], "dependsOn": d,
             "onResult": {"terminateJobWithSuccess": [], "continueJob": [0]}}
        if POLICIES:
            t.update({"timeout": 3600, "retry": {"attempts": 2, "delaySeconds": 1}})
        return t
    schema = ("iglu:io.factotum/factfile/jsonschema/1-0-0" if POLICIES
              else "iglu:com.snowplowanalytics.factotum/factfile/jsonschema/1-0-0")
    doc = {"schema": schema, "data": {"name": name, "tasks": [task(n, d) for n, d in tasks]}}
    with open(path, "w") as f:
        json.dump(doc, f)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Etcd:
    """A throwaway single-node etcd on ephemeral ports."""

    def __init__(self, work):
        self.client, peer = free_port(), free_port()
        c, p = f"http://127.0.0.1:{self.client}", f"http://127.0.0.1:{peer}"
        self.endpoint = c
        self.proc = subprocess.Popen(
            ["etcd", "--name", "bench", "--data-dir", os.path.join(work, f"etcd-{self.client}"),
             "--listen-client-urls", c, "--advertise-client-urls", c, "--listen-peer-urls", p,
             "--initial-advertise-peer-urls", p, "--initial-cluster", f"bench={p}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import urllib.request
        for _ in range(200):
            try:
                if b'"health":"true"' in urllib.request.urlopen(c + "/health", timeout=1).read():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        sys.exit("etcd did not start")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


# Extra coordinator flags (`--etcd URL` in etcd mode).
COORD = lambda work: ()

# With --tls: the directory `factotum-coordinator certs` wrote (mutual TLS: the coordinator
# checks agents' certificates), else None.
TLS = None


_HTTP = {}


def http_args(bin_dir):
    """`--http-listen 127.0.0.1:0` for coordinators that have an HTTP port (older binaries,
    measured with --compare, have none); several run at once, so none takes the default."""
    if bin_dir not in _HTTP:
        help_text = subprocess.run([os.path.join(bin_dir, "factotum-coordinator"), "--help"],
                                   capture_output=True, text=True).stdout
        _HTTP[bin_dir] = ("--http-listen", "127.0.0.1:0") if "--http-listen" in help_text else ()
    return _HTTP[bin_dir]


def make_certs(bin_dir, agents=8):
    pki = tempfile.mkdtemp()
    args = ["certs", "--out", pki, "--host", "127.0.0.1"]
    for i in range(agents):
        args += ["--agent", f"bench-{i}"]
    subprocess.run([os.path.join(bin_dir, "factotum-coordinator"), *args], check=True, stdout=subprocess.DEVNULL)
    return pki


def tls_coordinator():
    if not TLS:
        return ()
    return ("--tls-cert", f"{TLS}/server/tls.crt", "--tls-key", f"{TLS}/server/tls.key", "--tls-client-ca", f"{TLS}/ca.crt")


def tls_agent(name):
    if not TLS:
        return ()
    return ("--tls-ca", f"{TLS}/ca.crt", "--tls-cert", f"{TLS}/agents/{name}/tls.crt", "--tls-key", f"{TLS}/agents/{name}/tls.key")


def tls_client():
    return ("--tls-ca", f"{TLS}/ca.crt") if TLS else ()


class Fleet:
    def __init__(self, bin_dir, work, agents=1, agent_args=(), agent_env=None, coordinator_args=()):
        self.bin, self.work, self.procs = bin_dir, work, []
        out = open(os.path.join(work, f"coordinator-{time.monotonic_ns()}.out"), "w+")
        self.coordinator = subprocess.Popen([os.path.join(bin_dir, "factotum-coordinator"), "--listen", "127.0.0.1:0", *http_args(bin_dir),
                                             *COORD(work), *tls_coordinator(), *coordinator_args],
                                            stdout=out, stderr=subprocess.DEVNULL)
        self.procs.append(self.coordinator)
        for _ in range(200):
            out.seek(0)
            line = out.readline()
            if line.startswith("listening on "):
                self.url = ("https://" if TLS else "http://") + line.split()[-1]
                break
            time.sleep(0.05)
        else:
            sys.exit("the coordinator did not start")
        self.agent_logs = []
        for i in range(agents):
            log = os.path.join(work, f"agent{i}.log")
            self.agent_logs.append(log)
            env = dict(os.environ, **(agent_env or {}))
            self.procs.append(subprocess.Popen(
                [os.path.join(bin_dir, "factotum-agent"), "--coordinator", self.url, "--name", f"bench-{i}",
                 *tls_agent(f"bench-{i}"), *(a.replace("{agent}", f"bench-{i}") for a in agent_args)],
                stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env))
        for _ in range(200):
            out_ = subprocess.run([self.cli(), "agents", "--coordinator", self.url, *tls_client()],
                                  capture_output=True, text=True).stdout
            if len(out_.strip().splitlines()) == agents + 1:
                break
            time.sleep(0.05)

    def cli(self):
        return os.path.join(self.bin, "factotum")

    def submit_wait(self, ff, *extra):
        t0 = time.perf_counter()
        p = subprocess.run([self.cli(), "submit", ff, "--coordinator", self.url, "--wait", *tls_client(), *extra],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if p.returncode != 0:
            sys.exit(f"submit --wait failed: {p.returncode}")
        return time.perf_counter() - t0

    def stop(self):
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def parse_time(ts):
    # 2026-11-23T17:30:00.123456Z -> seconds
    from datetime import datetime
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


# Extra agent flags: `--state-dir` when the benchmark runs with task supervisors.
STATE = lambda work: ()


def hop_latency(bin_dir, runs):
    hops = []
    with tempfile.TemporaryDirectory() as work:
        ff = os.path.join(work, "chain.factfile")
        factfile(ff, "chain-200", [(f"t{i}", [f"t{i-1}"] if i else []) for i in range(200)])
        for r in range(runs):
            fleet = Fleet(bin_dir, work, agents=1, agent_args=("--log-format", "json", *STATE(work)),
                          agent_env={"RUST_LOG": "factotum_agent::executor=debug"})
            fleet.submit_wait(ff)
            fleet.stop()
            events = []
            for line in open(fleet.agent_logs[0]):
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                msg = rec.get("fields", {}).get("message")
                if msg in ("process spawned", "process exited"):
                    events.append((parse_time(rec["timestamp"]), msg))
            events.sort()
            exits = [t for t, m in events if m == "process exited"]
            spawns = [t for t, m in events if m == "process spawned"]
            if len(spawns) != 200 or len(exits) != 200:
                sys.exit(f"expected 200 spawns and exits in the agent's log, got {len(spawns)} and {len(exits)}")
            hops += [(spawns[i + 1] - exits[i]) * 1000 for i in range(199)]
    hops.sort()
    p50 = hops[len(hops) // 2]
    p99 = hops[int(len(hops) * 0.99)]
    print(f"hop latency (chain of 200 true, {runs} runs, {len(hops)} hops{', --state-dir' if STATE('') else ''}"
          f"{', mTLS' if TLS else ''}): p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
          f"max {hops[-1]:.2f} ms", flush=True)
    return p50


def throughput(bin_dir, runs):
    with tempfile.TemporaryDirectory() as work:
        ff = os.path.join(work, "wide.factfile")
        factfile(ff, "independent-2000", [(f"t{i}", []) for i in range(2000)])
        fleet = Fleet(bin_dir, work, agents=4, agent_args=("--slots", "0", *STATE(work)))
        fleet_times, local_times = [], []
        for _ in range(runs):
            fleet_times.append(fleet.submit_wait(ff, "--placement", "spread"))
            t0 = time.perf_counter()
            subprocess.run([fleet.cli(), "run", ff], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            local_times.append(time.perf_counter() - t0)
        fleet.stop()
    f, l = statistics.median(fleet_times), statistics.median(local_times)
    print(f"throughput (2000 independent true over 4 agents, spread, median of {runs}"
          f"{', --state-dir' if STATE('') else ''}{', mTLS' if TLS else ''}): "
          f"{2000 / f:.0f} tasks/s (run took {f * 1000:.0f} ms); local runner {2000 / l:.0f} tasks/s "
          f"({l * 1000:.0f} ms); fleet/local ratio {l / f:.2f}", flush=True)
    return 2000 / f


def compare(args):
    """The binaries in --bin against those in --compare (say, the previous commit's), run by
    run in alternation (the machine is shared and noisy): medians and their ratios."""
    rows = {"new": ([], []), "old": ([], [])}
    for r in range(args.runs):
        for label, bin_dir in (("old", args.compare), ("new", args.bin)):
            print(f"-- run {r + 1}/{args.runs}, {label} ({bin_dir})", flush=True)
            rows[label][0].append(hop_latency(bin_dir, 1))
            rows[label][1].append(throughput(bin_dir, 1))
    (new_hop, new_tp), (old_hop, old_tp) = ([statistics.median(x) for x in rows[k]] for k in ("new", "old"))
    print(f"compare ({args.runs} alternating runs): hop p50 {new_hop:.2f} ms vs {old_hop:.2f} ms "
          f"(new/old {new_hop / old_hop:.2f}); throughput {new_tp:.0f} vs {old_tp:.0f} tasks/s "
          f"(new/old {new_tp / old_tp:.3f})", flush=True)


def durable(args):
    """Agents with --state-dir against plain agents (issue 15: durable agents at full speed),
    run by run in alternation in one invocation: medians and the ratios state-dir/plain."""
    global STATE
    # Logs where a plain agent keeps them by default (a long-lived directory), not in the
    # fresh temporary state dir: creating files in a directory just made where the previous
    # run's were removed costs ext4 far more (inode allocation skips recently freed inodes)
    # and would measure the file system, not the agent. --durable-fresh-logs keeps the default.
    home = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    # With --durable-fresh-logs both keep logs in a fresh temporary directory instead (the
    # state dir's default for --state-dir agents; --log-dir there for plain ones).
    fresh = args.durable_fresh_logs
    # Each agent its own directory, the very one a plain agent of that name logs to by default:
    # one directory shared by all four made every file creation contend (0.81x; 1.04x apart).
    logs = () if fresh else ("--log-dir", os.path.join(home, "factotum", "logs", "{agent}"))
    plain = lambda work: ("--log-dir", os.path.join(work, f"logs-{time.monotonic_ns()}")) if fresh else ()
    state = lambda work: ("--state-dir", os.path.join(work, f"state-{time.monotonic_ns()}"), *logs)
    rows = {"plain": ([], []), "state-dir": ([], [])}
    for r in range(args.runs):
        for label, mode in (("plain", plain), ("state-dir", state)):
            STATE = mode
            print(f"-- run {r + 1}/{args.runs}, {label}", flush=True)
            if args.only in (None, "hop"):
                rows[label][0].append(hop_latency(args.bin, 1))
            if args.only in (None, "throughput"):
                rows[label][1].append(throughput(args.bin, 1))
    med = {k: [statistics.median(x) if x else None for x in v] for k, v in rows.items()}
    (p_hop, p_tp), (s_hop, s_tp) = med["plain"], med["state-dir"]
    if p_hop:
        print(f"durable: hop p50 (median of {args.runs} runs' p50) --state-dir {s_hop:.2f} ms vs plain "
              f"{p_hop:.2f} ms: ratio {s_hop / p_hop:.2f} (target <= 1.2)", flush=True)
    if p_tp:
        print(f"durable: throughput (median of {args.runs}) --state-dir {s_tp:.0f} vs plain {p_tp:.0f} "
              f"tasks/s: ratio {s_tp / p_tp:.2f} (target >= 0.9)", flush=True)


def agent_spawns(log):
    """Times (s) of the agent's `process spawned` events."""
    out = []
    for line in open(log):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("fields", {}).get("message") == "process spawned":
            out.append(parse_time(rec["timestamp"]))
    return sorted(out)


def submit_10k(bin_dir, runs):
    """From the start of `factotum submit` of a 10,000-task DAG to its first task's spawn."""
    times = []
    with tempfile.TemporaryDirectory() as work:
        ff = os.path.join(work, "10k.factfile")
        factfile(ff, "10k", [(f"t{i}", [f"t{(i - 1) // 2}"] if i else []) for i in range(10_000)])
        for _ in range(runs):
            fleet = Fleet(bin_dir, work, agents=1, agent_args=("--log-format", "json"),
                          agent_env={"RUST_LOG": "factotum_agent::executor=debug"})
            t0 = time.time()
            subprocess.run([fleet.cli(), "submit", ff, "--coordinator", fleet.url],
                           stdout=subprocess.DEVNULL, check=True)
            time.sleep(1)
            fleet.stop()
            spawns = agent_spawns(fleet.agent_logs[0])
            if spawns:
                times.append((spawns[0] - t0) * 1000)
    if not times:
        print("submit 10k: no dispatch seen (dry runs spawn nothing); see below")
        return
    print(f"submit of a 10,000-task DAG to its first dispatch (median of {len(times)}): "
          f"{statistics.median(times):.0f} ms", flush=True)


def json_records(log):
    """The agent's JSON log lines (`--log-format json`), parsed; other lines skipped."""
    out = []
    with open(log) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def agent_leases(log):
    """(time s, epoch, run, task, attempt) of each `lease accepted` the agent logged (debug level,
    target factotum_agent), in time order."""
    out = []
    for rec in json_records(log):
        fields = rec.get("fields", {})
        if fields.get("message") != "lease accepted":
            continue
        if "epoch" not in fields:
            sys.exit(f"failover: a `lease accepted` line without an epoch field in {log}: {rec}")
        out.append((parse_time(rec["timestamp"]), int(fields["epoch"]), fields.get("run"),
                    fields.get("task"), fields.get("attempt")))
    return sorted(out, key=lambda lease: lease[0])


def leading_at(err_log):
    """When a coordinator logged `leading` (its pretty log's first field is the time), or None."""
    with open(err_log) as f:
        for line in f:
            if " leading" in line:
                try:
                    return parse_time(line.split()[0])
                except ValueError:
                    return None
    return None


def wait_for(secs, check):
    t0 = time.monotonic()
    while time.monotonic() - t0 < secs:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    return None


# The agent line a failover is measured by: the agent logs it at debug level for every lease it
# takes, with the leader's epoch (fencing token).
LEASE_LOG = "info,factotum_agent=debug"


def failover(bin_dir, runs, etcd, ttl):
    """kill -9 of the leader of three, the agent connected to it. A failover ends at the first
    lease stamped with a newer epoch than the dead leader's (a task the old leader leased just
    before it died, spawned after the kill, does not count). Reported: kill to that lease as the
    agent logged it, and kill to the spawn of its task; kill to the new leader's `leading` too."""
    to_lease, to_spawn, to_leading, first_spawn = [], [], [], []
    with tempfile.TemporaryDirectory() as work:
        ff = os.path.join(work, "beat.factfile")
        # Long enough to outlast the failover at any TTL measured (1000 × 50 ms ≥ 50 s).
        factfile(ff, "beat", [(f"t{i}", [f"t{i-1}"] if i else []) for i in range(1000)])
        with open(ff) as f:
            doc = json.load(f)
        for t in doc["data"]["tasks"]:
            t["command"] = "sleep 0.05"
        with open(ff, "w") as f:
            json.dump(doc, f)
        for r in range(runs):
            procs = []  # killed however the run ends (a failed check included)
            try:
                got = failover_once(bin_dir, work, ff, etcd, ttl, r, procs)
            finally:
                for p in procs:
                    p.kill()
                    p.wait()
            to_lease.append(got["lease"])
            if "spawn" in got:
                to_spawn.append(got["spawn"])
            if "leading" in got:
                to_leading.append(got["leading"])
            if "first" in got:
                first_spawn.append(got["first"])

    def show(xs):
        return (f"median {statistics.median(xs):.0f} ms ({', '.join(f'{x:.0f}' for x in xs)})"
                if xs else "not seen")
    label = f"--lease-ttl {ttl}" if ttl is not None else "default lease TTL (5 s)"
    print(f"failover (kill -9 of the leader of three, {label}, {runs} runs): to the first lease of the "
          f"new epoch {show(to_lease)}; to its task's spawn {show(to_spawn)}; "
          f"to the new leader's `leading` {show(to_leading)} (the first spawn after the kill, "
          f"whoever leased it, as measured before: {show(first_spawn)})", flush=True)


def tail(path, n=20):
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def failover_once(bin_dir, work, ff, etcd, ttl, r, procs):
    """One failover; the ms from the kill to each mark. Every process started goes in `procs`."""
    def fail(why, log=None):
        sys.exit(f"failover: {why}" + (f"\n--- the last lines of {os.path.basename(log)}:\n{tail(log)}" if log else ""))

    ttl_flag = ("--lease-ttl", ttl) if ttl is not None else ()
    prefix = f"/failover-{ttl}-{r}"
    coords = []
    for i in range(3):
        out = os.path.join(work, f"c{r}-{i}.out")
        err = os.path.join(work, f"c{r}-{i}.err")
        p = subprocess.Popen([os.path.join(bin_dir, "factotum-coordinator"), "--listen", "127.0.0.1:0", *http_args(bin_dir),
                              "--etcd", etcd.endpoint, "--etcd-prefix", prefix, *ttl_flag],
                             stdout=open(out, "w"), stderr=open(err, "w"))
        procs.append(p)
        coords.append((p, out, err))
        time.sleep(0.3 if i == 0 else 0)
    urls = []
    for p, out, err in coords:
        def listening():
            line = open(out).readline()
            return line.startswith("listening on ") and "http://" + line.split()[-1]
        url = wait_for(10, listening)
        if not url:
            fail("a coordinator did not start", err)
        urls.append(url)
    leader = wait_for(30, lambda: next(
        (str(i) for i, (p, o, e) in enumerate(coords) if " leading" in open(e).read()), None))
    if leader is None:
        fail("no coordinator logged ` leading` within 30 s", coords[0][2])
    leader = int(leader)
    log = os.path.join(work, f"agent-{ttl}-{r}.log")
    agent = subprocess.Popen([os.path.join(bin_dir, "factotum-agent"), "--coordinator", urls[(leader + 1) % 3],
                              "--log-format", "json"], stdout=subprocess.DEVNULL, stderr=open(log, "w"),
                             env=dict(os.environ, RUST_LOG=LEASE_LOG))
    procs.insert(0, agent)
    time.sleep(1)
    # Every coordinator, the leader first: the CLI tries them in order.
    order = [urls[leader]] + [u for i, u in enumerate(urls) if i != leader]
    sub = subprocess.run([os.path.join(bin_dir, "factotum"), "submit", ff,
                          *[a for u in order for a in ("--coordinator", u)]],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if sub.returncode != 0:
        fail(f"factotum submit exited with {sub.returncode}: {sub.stderr.strip()}")
    if not wait_for(10, lambda: agent_spawns(log)):
        fail("the agent spawned nothing within 10 s of the submission", log)
    time.sleep(1.5)
    before = agent_leases(log)
    if not before:
        fail(f"the agent ran tasks but logged no `lease accepted` line (debug, target factotum_agent, "
             f"fields run, task, attempt, epoch) with RUST_LOG={LEASE_LOG}: this agent does not log it, "
             f"so the failover cannot be measured", log)
    old_epoch = max(e for _, e, *_ in before)
    t_kill = time.time()
    coords[leader][0].kill()
    limit = ttl_or_default(ttl) + 30
    newer = wait_for(limit, lambda: next((lease for lease in agent_leases(log) if lease[1] > old_epoch), None))
    if newer is None:
        fail(f"no lease with an epoch above {old_epoch} within {limit:.0f} s of the kill", log)
    time.sleep(0.5)
    t_lease = newer[0]
    got = {"lease": (t_lease - t_kill) * 1000}
    spawns = agent_spawns(log)
    spawn = next((t for t in spawns if t >= t_lease), None)
    if spawn is not None:
        got["spawn"] = (spawn - t_kill) * 1000
    # The old measure, for comparison: the first spawn after the kill, whoever leased it.
    first = next((t for t in spawns if t > t_kill), None)
    if first is not None:
        got["first"] = (first - t_kill) * 1000
    new_leader = next((i for i, (p, o, e) in enumerate(coords) if i != leader and " leading" in open(e).read()), None)
    t_leading = leading_at(coords[new_leader][2]) if new_leader is not None else None
    if t_leading is not None:
        got["leading"] = (t_leading - t_kill) * 1000
    return got


def ttl_or_default(ttl):
    """Seconds: `ttl` as given to --lease-ttl (`2`, `2s`, `500ms`), or the default 5."""
    if ttl is None:
        return 5.0
    for unit, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if ttl.endswith(unit):
            return float(ttl[:-len(unit)]) * scale
    return float(ttl)


def proc_stats(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    ticks = int(parts[11]) + int(parts[12])  # utime + stime
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    return ticks / os.sysconf("SC_CLK_TCK"), rss


def scale(bin_dir, counts):
    for n in counts:
        with tempfile.TemporaryDirectory() as work:
            fleet = Fleet(bin_dir, work, agents=0)
            pid = fleet.coordinator.pid
            _, base_rss = proc_stats(pid)
            sim = subprocess.Popen([os.path.join(bin_dir, "sim-agents"), "--coordinator", fleet.url,
                                    "--agents", str(n), "--seconds", "25"], stdout=subprocess.PIPE, text=True)
            line = sim.stdout.readline().strip()
            if not line.startswith("connected"):
                sys.exit(f"sim-agents: {line}")
            time.sleep(3)
            cpu0, _ = proc_stats(pid)
            t0 = time.perf_counter()
            peak = 0.0
            while time.perf_counter() - t0 < 15:
                peak = max(peak, proc_stats(pid)[1])
                time.sleep(0.5)
            cpu1, rss = proc_stats(pid)
            cores = (cpu1 - cpu0) / (time.perf_counter() - t0)
            listed = subprocess.run([fleet.cli(), "agents", "--coordinator", fleet.url], capture_output=True, text=True).stdout
            sim.terminate()
            sim.wait()
            fleet.stop()
            print(f"scale: {n} agents heartbeating every 2 s ({line}): coordinator RSS {peak:.0f} MiB "
                  f"(idle {base_rss:.0f} MiB), CPU {cores * 100:.1f}% of one core; `agents` lists "
                  f"{len(listed.strip().splitlines()) - 1}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--bin", default=os.path.join(TARGET, "release"))
    ap.add_argument("--scale", default="1000,5000")
    ap.add_argument("--only", choices=["hop", "throughput", "scale", "submit", "failover"])
    ap.add_argument("--state-dir", action="store_true", help="agents run tasks under their supervisor (--state-dir)")
    ap.add_argument("--durable", action="store_true",
                    help="hop and throughput (or --only one) of agents with --state-dir against plain agents, "
                         "alternating run by run; prints the medians' ratios")
    ap.add_argument("--durable-fresh-logs", action="store_true",
                    help="with --durable: every agent keeps its logs in a fresh temporary directory (for "
                         "--state-dir agents the default, in the state dir) rather than a long-lived one")
    ap.add_argument("--command", default="true",
                    help="every task's command (default `true`, a simple command: no shell on a plain agent; "
                         "`true;` goes through `sh -c` on every agent, as every task of a --state-dir agent does)")
    ap.add_argument("--etcd", action="store_true", help="coordinators record runs in a throwaway etcd")
    ap.add_argument("--policies", action="store_true", help="every task has a timeout and a retry (timers)")
    ap.add_argument("--tls", choices=["off", "on", "both"], default="off",
                    help="hop and throughput over mutual TLS (certificates from `factotum-coordinator certs`); "
                         "`both` measures plaintext then mTLS in the same run")
    ap.add_argument("--compare", metavar="DIR",
                    help="hop and throughput of --bin against the binaries in DIR, alternating run by run")
    ap.add_argument("--lease-ttl", default="default,2", metavar="TTLS",
                    help="failover (with --etcd): the coordinators' --lease-ttl values to measure, "
                         "comma-separated; `default` passes none (5 s) (default: default,2)")
    args = ap.parse_args()
    global COMMAND
    COMMAND = args.command
    if args.policies:
        global POLICIES
        POLICIES = True
    etcd = None
    if args.etcd:
        global COORD
        etcd_dir = tempfile.mkdtemp()
        etcd = Etcd(etcd_dir)
        prefix = iter(range(1_000_000))
        COORD = lambda work: ("--etcd", etcd.endpoint, "--etcd-prefix", f"/bench{next(prefix)}")
    if args.state_dir:
        global STATE
        STATE = lambda work: ("--state-dir", os.path.join(work, f"state-{time.monotonic_ns()}"))
    try:
        if args.durable:
            durable(args)
        elif args.compare:
            compare(args)
        elif args.tls == "off":
            measure(args, etcd)
        else:
            global TLS
            pki = make_certs(args.bin)
            modes = [None, pki] if args.tls == "both" else [pki]
            for _ in range(args.runs if args.tls == "both" else 1):
                for mode in modes:
                    TLS = mode
                    if args.tls == "both":
                        # Alternate the modes run by run (the machine is shared and noisy).
                        hop_latency(args.bin, 1)
                        throughput(args.bin, 1)
                    else:
                        measure(args, etcd)
    finally:
        if etcd:
            etcd.stop()


def measure(args, etcd):
    if args.only in (None, "hop"):
        hop_latency(args.bin, args.runs)
    if args.only in (None, "throughput"):
        throughput(args.bin, args.runs)
    if args.only in (None, "scale") and not args.etcd:
        scale(args.bin, [int(n) for n in args.scale.split(",")])
    if args.only in (None, "submit"):
        submit_10k(args.bin, args.runs)
    if args.only in (None, "failover") and args.etcd:
        for ttl in args.lease_ttl.split(","):
            failover(args.bin, args.runs, etcd, None if ttl == "default" else ttl)


if __name__ == "__main__":
    main()
