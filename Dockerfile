# syntax=docker/dockerfile:1
# One image with the Factotum binaries: the coordinator (what helm/factotum runs), the agent and
# its shim, and the CLI. Build from the repository root:
#   docker build -t registry.example/factotum:0.1.0 .
# scripts/chart-tests.sh checks that the binaries copied below are the workspace's bin targets.

FROM rust:1-bookworm AS build
# etcd-client's build script needs a protoc.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p factotum -p factotum-coordinator -p factotum-agent --bins \
 && mkdir -p /out \
 && cp target/release/factotum target/release/factotum-coordinator \
       target/release/factotum-agent target/release/factotum-shim /out/

FROM debian:bookworm-slim
# ca-certificates: https webhooks and etcd; tini: PID 1 for agents (reaps what tasks leave).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 factotum \
 && useradd --system --uid 10001 --gid factotum --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin factotum
COPY --from=build /out/factotum /usr/local/bin/factotum
COPY --from=build /out/factotum-coordinator /usr/local/bin/factotum-coordinator
COPY --from=build /out/factotum-agent /usr/local/bin/factotum-agent
COPY --from=build /out/factotum-shim /usr/local/bin/factotum-shim
# Numeric, so Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 7400 7401
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["factotum-coordinator", "--help"]
