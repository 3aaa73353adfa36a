#!/usr/bin/env python3
"""The web UI's runs list with many finished runs (issue 16: "fast with 10,000 finished runs").

Starts a release coordinator (HTTP port on) and one agent, submits N one-task runs under ten job
names (every fifth one failing), waits until all have finished, then times the JSON API the UI's
runs page reads: the first page, a page deep in the list (followed by page tokens), a job filter
and a state filter. Medians of --samples requests each.

Usage: python3 bench/ui_runs.py [--runs 10000] [--samples 20] [--bin target/release]
"""
import argparse, concurrent.futures, glob, json, os, statistics, sys, tempfile, time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fleet  # noqa: E402


def get(url):
    t0 = time.perf_counter()
    body = urllib.request.urlopen(url, timeout=30).read()
    return time.perf_counter() - t0, json.loads(body)


def timed(url, samples):
    times, doc = [], None
    for _ in range(samples):
        dt, doc = get(url)
        times.append(dt * 1000)
    return statistics.median(times), doc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--bin", default=os.path.join(fleet.TARGET, "release"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        bad = os.path.join(work, "bad.factfile")
        for i in range(10):
            fleet.factfile(os.path.join(work, f"job{i}.factfile"), f"job-{i}", [("t", [])])
        fleet.factfile(bad, "job-bad", [("t", [])])
        with open(bad) as fh:
            doc = json.load(fh)
        doc["data"]["tasks"][0]["command"] = "false"
        with open(bad, "w") as fh:
            json.dump(doc, fh)
        f = fleet.Fleet(args.bin, work, agents=1, agent_args=("--slots", "8", "--log-dir", "off"),
                        coordinator_args=("--history-max-runs", str(max(args.runs, 10_000))))
        try:
            out = glob.glob(os.path.join(work, "coordinator-*.out"))[0]
            http = next(l.split()[-1] for l in open(out) if l.startswith("http listening on "))
            base = f"http://{http}/api/runs"

            def submit(i):
                ff = bad if i % 5 == 4 else os.path.join(work, f"job{i % 10}.factfile")
                fleet.subprocess.run([f.cli(), "submit", ff, "--coordinator", f.url, "--allow-concurrent"],
                                     stdout=fleet.subprocess.DEVNULL, check=True)

            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                list(pool.map(submit, range(args.runs)))
            deadline = time.time() + 600
            while time.time() < deadline:
                _, page = get(f"{base}?state=running&page_size=1")
                _, waiting = get(f"{base}?state=waiting&page_size=1")
                if not page["runs"] and not waiting["runs"]:
                    break
                time.sleep(0.5)
            print(f"{args.runs} runs submitted and finished in {time.perf_counter() - t0:.0f} s", flush=True)

            first, doc = timed(f"{base}?page_size=50", args.samples)
            token, pages = doc.get("next_page_token"), 1
            while token and pages < args.runs // 100:
                _, doc = get(f"{base}?page_size=50&page_token={urllib.parse.quote(token)}")
                token, pages = doc.get("next_page_token"), pages + 1
            deep, _ = timed(f"{base}?page_size=50&page_token={urllib.parse.quote(token)}", args.samples) if token else (float("nan"), None)
            job, jdoc = timed(f"{base}?job=job-3&page_size=50", args.samples)
            failed, fdoc = timed(f"{base}?state=failed&page_size=50", args.samples)
            print(f"GET /api/runs?page_size=50 (first page): {first:.1f} ms")
            print(f"  page {pages + 1} (after following {pages} page tokens): {deep:.1f} ms")
            print(f"  ?job=job-3: {job:.1f} ms ({len(jdoc['runs'])} runs on the page)")
            print(f"  ?state=failed: {failed:.1f} ms ({len(fdoc['runs'])} runs on the page)")
        finally:
            f.stop()


if __name__ == "__main__":
    import urllib.parse  # noqa: F401
    main()
