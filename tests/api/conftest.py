"""pytest fixtures: `procs` starts real processes for one test (see support.py)."""

from support import procs  # noqa: F401
