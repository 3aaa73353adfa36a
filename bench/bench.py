#!/usr/bin/env python3
"""Factotum benchmarks: `factotum run` against `make -j` on the same DAGs (recipes `@true` and
`@sh -c true`), and the cost of parsing + validating + planning a 100k-task factfile.

Usage: python3 bench/bench.py [--runs N] [--factotum PATH] [--compare OTHER_BINARY] [--out DIR]
       python3 bench/bench.py --cpu [--compare OTHER_BINARY] [--console null|pipe] [--runs N]   # own CPU
Builds nothing: pass the release binary (default target/release/factotum). Every figure is a
median of N runs (default 7), factotum and make interleaved in the same loop so both see the same
machine load; the ratio is median(factotum) / median(make).
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def task(name, deps, command="true"):
    return {"name": name, "executor": "shell", "command": command, "arguments": [], "dependsOn": deps,
            "onResult": {"terminateJobWithSuccess": [], "continueJob": [0]}}


def shapes():
    """name -> list of (task, [deps])"""
    chain = [(f"t{i}", [f"t{i-1}"] if i else []) for i in range(500)]
    wide = [(f"t{i}", []) for i in range(500)]
    lattice = []
    for layer in range(20):
        for j in range(25):
            deps = [] if layer == 0 else [f"l{layer-1}_{(j + k) % 25}" for k in range(3)]
            lattice.append((f"l{layer}_{j}", deps))
    return {"chain-500": chain, "independent-500": wide, "lattice-20x25x3": lattice}


def write_factfile(path, name, tasks):
    doc = {"schema": "iglu:com.snowplowanalytics.factotum/factfile/jsonschema/1-0-0",
           "data": {"name": name, "tasks": [task(n, d) for n, d in tasks]}}
    with open(path, "w") as f:
        json.dump(doc, f)


def write_makefile(path, tasks, recipe="true"):
    names = [n for n, _ in tasks]
    with open(path, "w") as f:
        f.write(".PHONY: all " + " ".join(names) + "\n")
        f.write("all: " + " ".join(names) + "\n")
        for n, d in tasks:
            f.write(f"{n}: {' '.join(d)}\n\t@{recipe}\n")


def timed(cmd):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}): {' '.join(cmd)}")
    return dt


def measure_rss(cmd):
    """Wall time (s) and max RSS (MiB) of one child process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"command failed: {' '.join(cmd)}")
    return dt, ru.ru_maxrss / 1024.0


def big_factfile(path, n=100_000):
    tasks = []
    width = 100
    for i in range(n):
        layer, j = divmod(i, width)
        deps = [] if layer == 0 else [f"task-{(layer - 1) * width + (j + k) % width}" for k in range(3)]
        tasks.append((f"task-{i}", deps))
    write_factfile(path, "100k tasks", tasks)


def output_bench(args):
    """`factotum run` of one task printing short lines (issue 15 item 4): lines/s and peak RSS,
    without and with redaction (an `--env` secret makes every line go through the redactor)."""
    os.makedirs(args.out, exist_ok=True)
    cases = [("yes | head -c 50000000", 25_000_000), ("seq 10000000", 10_000_000)]
    for command, lines in cases:
        ff = os.path.join(args.out, "output.factfile")
        doc = {"schema": "iglu:com.snowplowanalytics.factotum/factfile/jsonschema/1-0-0",
               "data": {"name": "output", "tasks": [{
                   "name": "o", "executor": "shell", "command": "sh", "arguments": ["-c", command],
                   "dependsOn": [], "onResult": {"terminateJobWithSuccess": [], "continueJob": [0]}}]}}
        with open(ff, "w") as f:
            json.dump(doc, f)
        for label, extra in [("plain", []), ("redacting", ["--env", '{"token":"s3cr3t-value"}'])]:
            samples = [measure_rss([args.factotum, "run", ff, *extra]) for _ in range(args.runs)]
            t = statistics.median(s[0] for s in samples)
            rss = max(s[1] for s in samples)
            print(f"{command:24} {label:10} median {t*1000:7.0f} ms  {lines / t / 1e6:6.1f} M lines/s  "
                  f"max RSS {rss:.0f} MiB", flush=True)


def own_cpu_ms(cmd, console=subprocess.DEVNULL):
    """The CPU (ms) of the process itself, not its children: `perf stat --no-inherit -e task-clock`.

    Its stdout and stderr go to `console`: /dev/null by default, as in the wall-time runs (make
    prints nothing for `@true`), or a pipe this process reads as it comes (`--console pipe`),
    where every `write` wakes the reader and costs the writer more. perf's own figures go to a
    file, not to stderr, so they never share a pipe with what the command prints."""
    with tempfile.NamedTemporaryFile("r", suffix=".perf") as report:
        p = subprocess.run(["perf", "stat", "--no-inherit", "-x,", "-o", report.name, "-e", "task-clock", *cmd],
                           stdout=console, stderr=console)
        text = report.read()
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{text}")
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2].startswith("task-clock"):
            return float(fields[0])
    sys.exit(f"no task-clock in perf's output: {text}")


def cpu_bench(args):
    """The runner's own CPU per task on each shape; with --compare, the other binary interleaved."""
    os.makedirs(args.out, exist_ok=True)
    binaries = [("this", args.factotum)] + ([("compare", args.compare)] if args.compare else [])
    for name, tasks in shapes().items():
        ff = os.path.join(args.out, f"{name}.factfile")
        write_factfile(ff, name, tasks)
        mk = os.path.join(args.out, f"{name}.mk")
        write_makefile(mk, tasks)
        got = {label: [] for label, _ in binaries}
        made = []
        console = subprocess.PIPE if args.console == "pipe" else subprocess.DEVNULL
        for _ in range(args.runs):
            for label, exe in binaries:
                got[label].append(own_cpu_ms([exe, "run", ff], console))
            made.append(own_cpu_ms(["make", "-s", "-j", "-f", mk, "all"], console))
        cells = []
        for label, _ in binaries:
            ms = statistics.median(got[label])
            cells.append(f"{label} {ms:6.1f} ms ({ms * 1000 / len(tasks):5.0f} us/task)")
        ms = statistics.median(made)
        cells.append(f"make -j @true {ms:6.1f} ms ({ms * 1000 / len(tasks):5.0f} us/task)")
        print(f"{name:18} " + "   ".join(cells), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--factotum", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "factotum"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out"))
    ap.add_argument("--generate-100k", metavar="PATH", help=argparse.SUPPRESS)
    ap.add_argument("--output", action="store_true", help="only the short-line output benchmark")
    ap.add_argument("--cpu", action="store_true",
                    help="only the runner's own CPU per task (perf stat --no-inherit -e task-clock)")
    ap.add_argument("--compare", metavar="BINARY", help="another factotum, interleaved with the first")
    ap.add_argument("--console", choices=["null", "pipe"], default="null",
                    help="with --cpu: where the runner's console goes (default /dev/null, as in the wall-time runs)")
    args = ap.parse_args()
    if args.output:
        output_bench(args)
        return
    if args.cpu:
        cpu_bench(args)
        return
    if args.generate_100k:
        big_factfile(args.generate_100k)
        return
    os.makedirs(args.out, exist_ok=True)
    results = []
    for name, tasks in shapes().items():
        ff = os.path.join(args.out, f"{name}.factfile")
        mk = os.path.join(args.out, f"{name}.mk")
        # The same DAG with `@sh -c true` recipes: make then pays the shell that factotum's
        # `sh -c` pays (make execs `true` directly).
        mk_sh = os.path.join(args.out, f"{name}.sh.mk")
        write_factfile(ff, name, tasks)
        write_makefile(mk, tasks)
        write_makefile(mk_sh, tasks, "sh -c true")
        timed([args.factotum, "run", ff])  # warm the page cache
        other = []
        if args.compare:
            timed([args.compare, "run", ff])
        fac, mak, mak_sh = [], [], []
        for _ in range(args.runs):
            fac.append(timed([args.factotum, "run", ff]))
            if args.compare:
                other.append(timed([args.compare, "run", ff]))
            mak.append(timed(["make", "-s", "-j", "-f", mk, "all"]))
            mak_sh.append(timed(["make", "-s", "-j", "-f", mk_sh, "all"]))
        f, m, ms = statistics.median(fac), statistics.median(mak), statistics.median(mak_sh)
        results.append((name, f, m, f / m))
        print(f"{name:18} factotum {f*1000:8.1f} ms   make -j @true {m*1000:8.1f} ms (ratio {f/m:5.2f})"
              f"   make -j @sh -c true {ms*1000:8.1f} ms (ratio {f/ms:5.2f})", flush=True)
        if other:
            o = statistics.median(other)
            print(f"{'':18} compare  {o*1000:8.1f} ms   (ratio {o/m:5.2f} / {o/ms:5.2f})", flush=True)
    big = os.path.join(args.out, "100k.factfile")
    # Generated in a child process: Linux carries a process's peak RSS across fork and exec, so
    # a bench process that had held the big document would inflate the figure measured below.
    subprocess.run([sys.executable, os.path.abspath(__file__), "--generate-100k", big], check=True)
    samples = [measure_rss([args.factotum, "validate", big]) for _ in range(args.runs)]
    t = statistics.median(s[0] for s in samples)
    rss = statistics.median(s[1] for s in samples)
    rss_max = max(s[1] for s in samples)
    print(f"100k-task validate+plan: median {t*1000:.0f} ms, max RSS median {rss:.1f} MiB (worst {rss_max:.1f}) "
          f"({os.path.getsize(big) / 2**20:.1f} MiB factfile)")


if __name__ == "__main__":
    main()
