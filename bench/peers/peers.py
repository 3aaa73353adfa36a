#!/usr/bin/env python3
"""Factotum beside its peers on the same DAGs, every task `true`, interleaved in one loop so all
see the same machine load; each figure is a median, each ratio median(peer) / median(factotum)
on the same shape and size.

Peers (versions pinned: Debian's make and ninja, the lock files beside this script for the
Python ones; `bash bench/peers/setup.sh` installs them):
  make       make -s -j, recipes `@sh -c true` (what factotum runs per task: sh -c)
  make-true  make -s -j, recipes `@true` (no shell: the floor)
  ninja      ninja -j 1000, rules `sh -c true`
  luigi      luigi.build(local_scheduler=True, workers=4), each task subprocess `true`
  snakemake  snakemake --cores 4, each rule `shell: "true"` touching its output
  celery     Celery + Redis, 4 prefork workers; a chain / a group of tasks running `true`
  airflow    airflow dags test (sqlite), BashOperator `true`

Usage:
  cargo build --release --bin factotum && bash bench/peers/setup.sh
  python3 bench/peers/peers.py [--runs 5] [--peers make,ninja,luigi,...] [--n 500]
      [--slow-n 100] [--airflow-n 30] [--venvs target/peers]
Luigi, Snakemake and Airflow take --slow-n / --airflow-n tasks (they are 10-300x slower);
factotum runs every size a peer does, so each ratio compares the same DAG.
"""
import argparse, json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def shape(kind, n):
    """[(name, [deps])]"""
    if kind == "chain":
        return [(f"t{i}", [f"t{i-1}"] if i else []) for i in range(n)]
    return [(f"t{i}", []) for i in range(n)]


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


# --- one preparer per peer: files for a DAG, and the command that runs it once -----------------

def factotum(args, work, tasks):
    doc = {"schema": "iglu:com.snowplowanalytics.factotum/factfile/jsonschema/1-0-0",
           "data": {"name": "bench", "tasks": [
               {"name": n, "executor": "shell", "command": "true", "arguments": [], "dependsOn": d,
                "onResult": {"terminateJobWithSuccess": [], "continueJob": [0]}} for n, d in tasks]}}
    ff = write(os.path.join(work, "bench.factfile"), json.dumps(doc))
    return [args.factotum, "run", ff]


def make_with(recipe):
    def prepare(args, work, tasks):
        names = [n for n, _ in tasks]
        text = ".PHONY: all " + " ".join(names) + "\nall: " + " ".join(names) + "\n"
        text += "".join(f"{n}: {' '.join(d)}\n\t@{recipe}\n" for n, d in tasks)
        return ["make", "-s", "-j", "-f", write(os.path.join(work, "Makefile"), text), "all"]
    return prepare


def ninja(args, work, tasks):
    # Outputs are never written, so every run runs every edge (as every factotum run does).
    text = "rule run\n  command = sh -c true\n"
    text += "".join(f"build {n}: run{' || ' + ' '.join(d) if d else ''}\n" for n, d in tasks)
    text += "build all: phony " + " ".join(n for n, _ in tasks) + "\ndefault all\n"
    write(os.path.join(work, "build.ninja"), text)
    return ["ninja", "-C", work, "-j", "1000", "--quiet"]


LUIGI = '''
import json, os, subprocess, sys
import luigi
spec = json.load(open(sys.argv[1]))
out = sys.argv[2]
class T(luigi.Task):
    name = luigi.Parameter()
    def requires(self):
        return [T(name=d) for d in spec[self.name]]
    def output(self):
        return luigi.LocalTarget(os.path.join(out, self.name))
    def run(self):
        subprocess.run(["true"], check=True)
        open(self.output().path, "w").close()
class All(luigi.WrapperTask):
    def requires(self):
        return [T(name=n) for n in spec]
ok = luigi.build([All()], local_scheduler=True, workers=4, log_level="ERROR")
sys.exit(0 if ok else 1)
'''


def luigi(args, work, tasks):
    spec = write(os.path.join(work, "dag.json"), json.dumps({n: d for n, d in tasks}))
    script = write(os.path.join(work, "dag.py"), LUIGI)
    out = os.path.join(work, "out")
    # A fresh output directory each run: every task runs every time.
    return ["sh", "-c", f'rm -rf "{out}" && mkdir "{out}" && exec "$0" "$@"',
            venv(args, "luigi", "python"), script, spec, out]


def snakemake(args, work, tasks):
    rules = ["rule all:\n    input: " + ", ".join(f'"out/{n}"' for n, _ in tasks) + "\n"]
    for n, d in tasks:
        deps = ", ".join(f'"out/{x}"' for x in d)
        rules.append(f"rule {n}:\n" + (f"    input: {deps}\n" if d else "") +
                     f'    output: touch("out/{n}")\n    shell: "true"\n')
    snakefile = write(os.path.join(work, "Snakefile"), "\n".join(rules))
    return ["sh", "-c", f'rm -rf "{work}/out" "{work}/.snakemake" && exec "$0" "$@"',
            venv(args, "snakemake", "snakemake"), "-s", snakefile, "-d", work, "--cores", "4",
            "--quiet", "all", "all"]


CELERY_TASKS = '''
import os, subprocess
from celery import Celery
url = os.environ["BENCH_REDIS"]
app = Celery("bench", broker=url + "/0", backend=url + "/1")
app.conf.worker_prefetch_multiplier = 1
@app.task
def run():
    subprocess.run(["true"], check=True)
    return 0
'''

CELERY_CLIENT = '''
import sys
from celery import chain, group
from bench_tasks import run
kind, n = sys.argv[1], int(sys.argv[2])
sig = [run.si() for _ in range(n)]
res = (chain(*sig) if kind == "chain" else group(*sig)).apply_async()
res.get(timeout=600)
'''


class Celery:
    """A Redis server and a 4-process Celery worker, started once for all runs."""

    def __init__(self, args, work):
        self.port = free_port()
        self.env = dict(os.environ, BENCH_REDIS=f"redis://127.0.0.1:{self.port}",
                        PYTHONPATH=work)
        write(os.path.join(work, "bench_tasks.py"), CELERY_TASKS)
        self.client = write(os.path.join(work, "bench_client.py"), CELERY_CLIENT)
        self.redis = subprocess.Popen(["redis-server", "--port", str(self.port), "--save", "",
                                       "--appendonly", "no"], stdout=subprocess.DEVNULL)
        wait_port(self.port)
        self.worker = subprocess.Popen(
            [venv(args, "celery", "celery"), "-A", "bench_tasks", "worker", "-c", "4",
             "--pool", "prefork", "-l", "WARNING", "--without-gossip", "--without-mingle",
             "--without-heartbeat"], cwd=work, env=self.env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(3)  # the worker's processes connect

    def command(self, args, kind, n):
        return [venv(args, "celery", "python"), self.client, kind, str(n)]

    def stop(self):
        for p in (self.worker, self.redis):
            try:
                os.killpg(p.pid, signal.SIGTERM) if p is self.worker else p.terminate()
                p.wait(10)
            except Exception:
                p.kill()


AIRFLOW_DAG = '''
import json, os
import pendulum
from airflow.sdk import DAG
from airflow.providers.standard.operators.bash import BashOperator
spec = json.load(open(os.environ["BENCH_DAG"]))
with DAG("bench", schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False) as dag:
    ops = {n: BashOperator(task_id=n, bash_command="true") for n in spec}
    for n, deps in spec.items():
        for d in deps:
            ops[d] >> ops[n]
'''


def airflow_env(args, work):
    home = os.path.join(work, "airflow-home")
    os.makedirs(os.path.join(home, "dags"), exist_ok=True)
    return dict(os.environ, AIRFLOW_HOME=home, AIRFLOW__CORE__LOAD_EXAMPLES="False",
                AIRFLOW__CORE__DAGS_FOLDER=os.path.join(home, "dags"),
                AIRFLOW__LOGGING__LOGGING_LEVEL="ERROR", BENCH_DAG=os.path.join(work, "dag.json"))


def airflow(args, work, tasks):
    env = airflow_env(args, work)
    write(env["BENCH_DAG"], json.dumps({n: d for n, d in tasks}))
    write(os.path.join(env["AIRFLOW_HOME"], "dags", "bench.py"), AIRFLOW_DAG)
    if not os.path.exists(os.path.join(env["AIRFLOW_HOME"], "airflow.db")):
        subprocess.run([venv(args, "airflow", "airflow"), "db", "migrate"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return ["env"] + [f"{k}={v}" for k, v in env.items() if k.startswith(("AIRFLOW", "BENCH"))] + \
        [venv(args, "airflow", "airflow"), "dags", "test", "bench"]


PEERS = {"make": make_with("sh -c true"), "make-true": make_with("true"), "ninja": ninja,
         "luigi": luigi, "snakemake": snakemake, "celery": None, "airflow": airflow}
SLOW = {"luigi", "snakemake"}

# --- plumbing --------------------------------------------------------------------------------


def venv(args, peer, exe):
    path = os.path.join(args.venvs, peer, "bin", exe)
    if not os.path.exists(path):
        sys.exit(f"{path} is missing: run bash bench/peers/setup.sh first")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, secs=10):
    t0 = time.time()
    while time.time() - t0 < secs:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def timed(cmd, env=None):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    dt = time.perf_counter() - t0
    return dt if p.returncode == 0 else (None, p.stderr.decode(errors="replace")[-300:])


def size_for(args, peer):
    return args.airflow_n if peer == "airflow" else args.slow_n if peer in SLOW else args.n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--peers", default="make,make-true,ninja,luigi,snakemake,celery,airflow")
    ap.add_argument("--shapes", default="chain,independent")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--slow-n", type=int, default=100)
    ap.add_argument("--airflow-n", type=int, default=30)
    ap.add_argument("--factotum", default=os.path.join(ROOT, "target", "release", "factotum"))
    ap.add_argument("--venvs", default=os.path.join(ROOT, "target", "peers"))
    args = ap.parse_args()
    peers = [p for p in args.peers.split(",") if p]
    for p in peers:
        if p not in PEERS:
            sys.exit(f"unknown peer {p}: one of {', '.join(PEERS)}")
    times = {}  # (peer, shape, n) -> [seconds]
    failed = {}
    with tempfile.TemporaryDirectory() as top:
        os.makedirs(os.path.join(top, "celery"))
        celery = Celery(args, os.path.join(top, "celery")) if "celery" in peers else None
        try:
            commands = []  # (key, cmd)
            for kind in args.shapes.split(","):
                sizes = sorted({size_for(args, p) for p in peers})
                for n in sizes:
                    work = os.path.join(top, f"factotum-{kind}-{n}")
                    os.makedirs(work)
                    commands.append((("factotum", kind, n), factotum(args, work, shape(kind, n))))
                for p in peers:
                    n = size_for(args, p)
                    if p == "celery":
                        commands.append(((p, kind, n), celery.command(args, kind, n)))
                        continue
                    work = os.path.join(top, f"{p}-{kind}-{n}")
                    os.makedirs(work)
                    commands.append(((p, kind, n), PEERS[p](args, work, shape(kind, n))))
            env = celery.env if celery else None
            for r in range(args.runs):
                for key, cmd in commands:
                    if key in failed:
                        continue
                    got = timed(cmd, env if key[0] == "celery" else None)
                    if isinstance(got, tuple):
                        failed[key] = got[1]
                        print(f"{key[0]} {key[1]}-{key[2]}: failed: {got[1].strip()[-200:]}", file=sys.stderr)
                        continue
                    times.setdefault(key, []).append(got)
                print(f"run {r + 1}/{args.runs} done", file=sys.stderr)
        finally:
            if celery:
                celery.stop()
    print(f"| peer | shape | tasks | median | per task | vs factotum |")
    print("|---|---|---|---|---|---|")
    for (p, kind, n), ts in sorted(times.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0] != "factotum", kv[0][0])):
        med = statistics.median(ts)
        base = times.get(("factotum", kind, n))
        ratio = f"{med / statistics.median(base):.2f}x" if base and p != "factotum" else "1"
        print(f"| {p} | {kind} | {n} | {med * 1000:.0f} ms | {med / n * 1000:.2f} ms | {ratio} |")
    for (p, kind, n), why in failed.items():
        print(f"| {p} | {kind} | {n} | failed: {why.strip().splitlines()[-1] if why.strip() else '?'} | | |")


if __name__ == "__main__":
    main()
