"""Every flag the chart passes is one the binaries take (their --help lists it), so a renamed
flag fails here rather than in a crash-looping pod. Needs the debug binaries (`make unit` builds
them before `make chart` in `make test`); skipped when they are missing."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import FULLNAME, ROOT, VALUE_SETS, container

BIN = Path(os.environ.get("FACTOTUM_BIN_DIR", ROOT / "target" / "debug"))


def known_flags(binary: str) -> set[str]:
    path = BIN / binary
    if not path.is_file():
        pytest.skip(f"{path} is missing: run 'cargo build --workspace --bins' (make unit)")
    text = subprocess.run([path, "--help"], check=True, capture_output=True, text=True).stdout
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))


def passed_flags(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in args if a.startswith("--")}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_the_coordinator_takes_every_flag_the_chart_passes(render, name: str) -> None:
    r = render(name)
    unknown = passed_flags(r.args) - known_flags("factotum-coordinator")
    assert not unknown, unknown


@pytest.mark.parametrize("name", ["agents", "insecure-agents-monitor"])
def test_the_agent_takes_every_flag_the_chart_passes(render, name: str) -> None:
    args = container(render(name).one("DaemonSet", f"{FULLNAME}-agent"), "agent")["args"]
    unknown = passed_flags(args) - known_flags("factotum-agent")
    assert not unknown, unknown
