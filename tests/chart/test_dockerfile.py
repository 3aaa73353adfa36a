"""The Dockerfile (which CI cannot build: no image pulls) names the binaries the workspace has:
every binary it copies into the image is a bin target of the packages it builds, and every bin
target of those packages is copied."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import PurePosixPath

import yaml

from conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            word, _, rest = full.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def bin_targets() -> dict[str, set[str]]:
    """Package name -> its bin targets, from `cargo metadata` (offline, no dependencies)."""
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout
    )
    return {
        p["name"]: {t["name"] for t in p["targets"] if "bin" in t["kind"]}
        for p in meta["packages"]
    }


def test_the_image_copies_exactly_the_bins_of_the_packages_it_builds() -> None:
    steps = instructions()
    copied = set()
    for word, rest in steps:
        if word == "COPY" and rest.startswith("--from="):
            *sources, _dest = shlex.split(rest)[1:]
            copied |= {PurePosixPath(s).name for s in sources}
    # The packages the build stage's cargo build names with -p.
    (build,) = [
        cmd for w, r in steps if w == "RUN" for cmd in r.split("&&") if "cargo build" in cmd
    ]
    packages = re.findall(r"\s-p\s+(\S+)", build)
    targets = bin_targets()
    assert packages and all(p in targets for p in packages), (packages, sorted(targets))
    expected = set().union(*(targets[p] for p in packages))
    assert copied == expected, f"copied {sorted(copied)}, the packages' bins {sorted(expected)}"
    assert {"factotum", "factotum-coordinator", "factotum-agent"} <= copied
    if "factotum-shim" in targets.get("factotum-agent", set()):
        assert "factotum-shim" in copied


def test_the_image_is_built_on_bookworm_and_runs_as_a_numeric_non_root_user() -> None:
    steps = instructions()
    froms = [r for w, r in steps if w == "FROM"]
    assert froms[0].startswith("rust:1-bookworm")
    assert froms[-1] == "debian:bookworm-slim"
    users = [r for w, r in steps if w == "USER"]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users
    # The chart's runAsUser matches the image's user.
    values = yaml.safe_load((ROOT / "helm" / "factotum" / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
