# The one test command: `make test` (what CI runs too).
.PHONY: test deps fmt-check lint schemas unit api chart bench

test: deps fmt-check lint schemas unit api chart

deps:
	@scripts/install-deps.sh

fmt-check:
	cargo fmt --all -- --check

lint:
	cargo clippy --workspace --all-targets -- -D warnings
	python3 scripts/check-imports.py

# The extended factfile's JSON Schema and the samples against it (and Snowplow's in ../shared).
schemas:
	python3 scripts/check-schemas.py

# The fleet tests start the agent, shim and coordinator binaries: build them all first
# (`cargo test` builds only the binaries of packages with integration tests).
# Agents the tests start without --log-dir keep their task logs under a fresh XDG_STATE_HOME,
# not the user's ~/.local/state (removed afterwards, pass or fail).
unit:
	cargo build --workspace --bins
	state=$$(mktemp -d) && trap 'rm -rf "$$state"' EXIT && XDG_STATE_HOME=$$state cargo test --workspace

# The client API (factotum.jobs.v2) through Python stubs generated from its proto, against real
# coordinator, agent and etcd processes (the binaries `unit` built; pinned client in a venv).
api:
	scripts/api-tests.sh

# The Helm chart (helm/factotum), offline: lint, every value set's objects validated as
# Kubernetes objects, renders that must fail, the objects' flags, probes, ports and Secrets; and
# the Dockerfile's binaries against the workspace's (pinned Helm SDK and validator in a venv).
chart:
	scripts/chart-tests.sh

# Benchmarks (not part of the tests): figures go to docs/BENCHMARKS.md.
bench:
	cargo build --release --bin factotum
	python3 bench/bench.py
