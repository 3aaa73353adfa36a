//! The agent's flags (each with its `FACTOTUM_*` variable), checked and turned into what
//! [`crate::run`] takes.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use factotum_service::{DurationRange, LogFormat};

use crate::logs::LogSettings;
use crate::session::AgentConfig;
use crate::throttle::StreamRate;

/// The Factotum agent: takes task leases from a coordinator and runs them with `sh -c`, each in
/// its own process group.
///
/// It tries its coordinators in order and follows a follower to the leader; a change of leader
/// makes it reconnect at once, and only repeated failures make it back off (jittered
/// exponential, up to 10 s). It keeps its tasks running meanwhile; after `--disconnect-limit`
/// without a coordinator it stops them (TERM, then KILL) and reports them once it is back.
/// SIGTERM drains: no new leases, running tasks get `--drain-grace` to finish, then they are
/// stopped and reported.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "factotum-agent", version)]
pub struct AgentArgs {
    /// A TOML file of flags: each key a long flag name (`kill-grace = "10s"`), an array for a
    /// repeatable flag. Flags and their variables override it.
    #[arg(long, env = "FACTOTUM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A coordinator's gRPC address (repeatable; comma-separated in the env var), tried in order.
    #[arg(
        long,
        env = "FACTOTUM_COORDINATOR",
        value_delimiter = ',',
        value_name = "URL",
        default_value = factotum_proto::DEFAULT_COORDINATOR
    )]
    pub coordinator: Vec<String>,
    /// This agent's name (default: the hostname).
    #[arg(long, env = "FACTOTUM_NAME")]
    pub name: Option<String>,
    /// A label `key=value` for label constraints (repeatable; comma-separated in the env var).
    #[arg(
        long = "label",
        env = "FACTOTUM_LABELS",
        value_delimiter = ',',
        value_name = "KEY=VALUE"
    )]
    pub labels: Vec<String>,
    /// Tasks run at once (default: the number of CPUs; 0: no limit).
    #[arg(long, env = "FACTOTUM_SLOTS")]
    pub slots: Option<u32>,
    /// On SIGTERM, how long running tasks get to finish before they are stopped (seconds, or
    /// with units: 500ms, 15s, 2m, 1h30m).
    #[arg(long, env = "FACTOTUM_DRAIN_GRACE", value_name = "DURATION", default_value = "60",
          value_parser = DurationRange::ANY.parser())]
    pub drain_grace: Duration,
    /// How long without a coordinator before running tasks are stopped (seconds, or with
    /// units: 500ms, 15s, 2m, 1h30m).
    #[arg(long, env = "FACTOTUM_DISCONNECT_LIMIT", value_name = "DURATION", default_value = "60",
          value_parser = DurationRange::ANY.parser())]
    pub disconnect_limit: Duration,
    /// Time between TERM and KILL when a task is stopped (seconds, or with units: 500ms, 15s,
    /// 2m, 1h30m).
    #[arg(long, env = "FACTOTUM_KILL_GRACE", value_name = "DURATION", default_value = "10",
          value_parser = DurationRange::ANY.parser())]
    pub kill_grace: Duration,
    /// Record running tasks here (one directory each) and run them under a small supervisor,
    /// so they outlive the agent: a restarted agent reports what ended meanwhile and re-attaches
    /// what still runs. Without it, tasks are the agent's children and die with it.
    #[arg(long, env = "FACTOTUM_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The largest gRPC message this agent sends or accepts; set it to the coordinators'
    /// `--max-message-size`. What the agent sends stays well under it by construction: results
    /// carry at most 512 KiB of each stream, output travels in pieces of at most 1 MiB.
    #[arg(long, env = "FACTOTUM_MAX_MESSAGE_SIZE", value_name = "BYTES", default_value = "16MiB",
          value_parser = factotum_service::size::at_least(factotum_common::run::MIN_MAX_MESSAGE as u64))]
    pub max_message_size: usize,
    /// Output bytes per second that each task streams to the coordinator (512KiB, 1MiB, ...; 0
    /// or `unlimited`: every line, and a coordinator that falls behind slows the task down).
    /// Over it, lines are left out of the stream, never held back: the task is not slowed, its
    /// result keeps its tail, and one line on its stderr says how many bytes were not streamed.
    #[arg(long, env = "FACTOTUM_MAX_STREAM_RATE", value_name = "BYTES", default_value = "1MiB",
          value_parser = stream_rate)]
    pub max_stream_rate: u64,
    /// Where every task attempt's complete stdout and stderr are kept, raw, for `factotum logs`
    /// (default: <state-dir>/logs; without --state-dir, $XDG_STATE_HOME/factotum/logs/<name>,
    /// or ~/.local/state/…); `off`: none are kept.
    #[arg(long, env = "FACTOTUM_LOG_DIR", value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// Task logs older than this are removed (checked at start and periodically).
    #[arg(long, env = "FACTOTUM_LOG_MAX_AGE", value_name = "DURATION", default_value = "7d",
          value_parser = DurationRange::ANY.parser())]
    pub log_max_age: Duration,
    /// At most this much disk for task logs: the oldest attempts' logs are removed first.
    #[arg(long, env = "FACTOTUM_LOG_MAX_BYTES", value_name = "BYTES", default_value = "10GiB",
          value_parser = factotum_service::size::parse_size)]
    pub log_max_bytes: u64,
    #[command(flatten)]
    pub tls: factotum_service::tls::ClientArgs,
    /// Address for an HTTP port with GET /metrics (Prometheus) and /healthz; plain HTTP, none
    /// by default. It prints `http listening on ADDR` (useful with port 0).
    #[arg(long, env = "FACTOTUM_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<std::net::SocketAddr>,
    /// Log format (the level comes from RUST_LOG, default info).
    #[arg(
        long,
        env = "FACTOTUM_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    pub log_format: LogFormat,
}

/// What [`crate::run`] needs besides the coordinators' addresses.
#[derive(Debug, Clone)]
pub struct Config {
    pub agent: AgentConfig,
    /// Without a coordinator this long, running tasks are stopped.
    pub disconnect_limit: Duration,
    /// `--max-message-size`: the session's encode and decode limits.
    pub max_message: usize,
    /// TLS for `https://` coordinators (`--tls-ca`, `--tls-cert`, `--tls-key`).
    pub tls: tonic::transport::ClientTlsConfig,
    /// `--http-listen`: serve /metrics and /healthz there.
    pub http_listen: Option<std::net::SocketAddr>,
    /// `--log-dir` (resolved), `--log-max-age`, `--log-max-bytes`; `None`: `--log-dir off`.
    pub logs: Option<LogSettings>,
}

/// The coordinators' addresses, checked, without duplicates, in the order given. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints(Vec<String>);

impl Endpoints {
    pub fn new(urls: impl IntoIterator<Item = String>) -> anyhow::Result<Endpoints> {
        let mut list: Vec<String> = vec![];
        for url in urls {
            let url = url.trim().to_string();
            if url.is_empty() {
                continue;
            }
            endpoint(&url)?;
            if !list.contains(&url) {
                list.push(url);
            }
        }
        if list.is_empty() {
            bail!("--coordinator needs at least one address (like http://127.0.0.1:7400)");
        }
        Ok(Endpoints(list))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl AgentArgs {
    /// Checks the flags and looks this machine up (hostname, addresses).
    pub fn config(&self) -> anyhow::Result<(Config, Endpoints)> {
        let mut labels = HashMap::new();
        for l in &self.labels {
            match l.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    labels.insert(k.trim().to_string(), v.trim().to_string());
                }
                _ => bail!("--label must be key=value, not '{l}'"),
            }
        }
        let endpoints = Endpoints::new(self.coordinator.iter().cloned())?;
        let me = crate::identity::local(labels.clone());
        let agent = AgentConfig {
            agent_id: self.name.clone().unwrap_or_else(|| me.hostname.clone()),
            hostname: me.hostname.clone(),
            ips: me.ips.iter().map(|i| i.to_string()).collect(),
            labels,
            slots: self.slots.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
            }),
            kill_grace: self.kill_grace,
            drain_grace: self.drain_grace,
            // With --state-dir tasks are recorded by their own shell (attempt::recorded): no
            // supervisor process per task.
            shim_exe: None,
            state_dir: self.state_dir.clone(),
            max_stream_rate: NonZeroU64::new(self.max_stream_rate).map(StreamRate),
        };
        let tls = self.tls.config()?;
        let logs = match &self.log_dir {
            Some(d) if d.as_os_str() == "off" => None,
            dir => Some(LogSettings {
                dir: match dir {
                    Some(d) => d.clone(),
                    None => crate::logs::default_dir(self.state_dir.as_deref(), &agent.agent_id),
                },
                max_age: self.log_max_age,
                max_bytes: self.log_max_bytes,
            }),
        };
        let config = Config {
            logs,
            agent,
            disconnect_limit: self.disconnect_limit,
            max_message: self.max_message_size,
            tls,
            http_listen: self.http_listen,
        };
        Ok((config, endpoints))
    }
}

/// Longest a connection attempt (TCP, HTTP/2, the session's answer) may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The gRPC endpoint for a coordinator URL, with `tls` for an `https://` one.
pub(crate) fn tls_endpoint(
    url: &str,
    tls: &tonic::transport::ClientTlsConfig,
) -> anyhow::Result<tonic::transport::Endpoint> {
    let e = endpoint(url)?;
    if url.starts_with("https://") {
        return e
            .tls_config(tls.clone())
            .with_context(|| format!("TLS to {url}"));
    }
    Ok(e)
}

/// The gRPC endpoint for a coordinator URL.
pub(crate) fn endpoint(url: &str) -> anyhow::Result<tonic::transport::Endpoint> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_string())
        .with_context(|| format!("'{url}' is not a coordinator URL (like http://127.0.0.1:7400)"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20)))
}

/// `--max-stream-rate`: a size (per second, so `1MiB/s` reads too); 0 or `unlimited` for none.
fn stream_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("unlimited") {
        return Ok(0);
    }
    factotum_service::size::parse_size(t.strip_suffix("/s").unwrap_or(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<AgentArgs, clap::Error> {
        AgentArgs::try_parse_from(std::iter::once("factotum-agent").chain(args.iter().copied()))
    }

    #[test]
    fn coordinators_repeat_and_keep_their_order() {
        let a = parse(&["--coordinator", "http://b:1", "--coordinator", "http://a:1"]).unwrap();
        assert_eq!(a.coordinator, ["http://b:1", "http://a:1"]);
        let a = parse(&["--coordinator", "http://b:1,http://a:1,http://b:1"]).unwrap();
        let e = Endpoints::new(a.coordinator).unwrap();
        assert_eq!(e.as_slice(), ["http://b:1", "http://a:1"]);
        assert_eq!(
            parse(&[]).unwrap().coordinator,
            [factotum_proto::DEFAULT_COORDINATOR]
        );
    }

    #[test]
    fn a_bad_coordinator_url_is_refused_up_front() {
        let e = Endpoints::new(["not a url".to_string()]).unwrap_err();
        assert!(e.to_string().contains("is not a coordinator URL"), "{e}");
        assert!(Endpoints::new([String::new()]).is_err());
    }

    #[test]
    fn durations_are_seconds_or_take_units() {
        let a = parse(&[
            "--drain-grace",
            "1.5",
            "--disconnect-limit",
            "500ms",
            "--kill-grace",
            "1h30m",
        ])
        .unwrap();
        assert_eq!(a.drain_grace, Duration::from_millis(1500));
        assert_eq!(a.disconnect_limit, Duration::from_millis(500));
        assert_eq!(a.kill_grace, Duration::from_secs(5400));
        let d = parse(&[]).unwrap();
        assert_eq!(
            (d.drain_grace, d.disconnect_limit, d.kill_grace),
            (
                Duration::from_secs(60),
                Duration::from_secs(60),
                Duration::from_secs(10)
            )
        );
        let e = parse(&["--kill-grace", "soon"]).unwrap_err().to_string();
        assert!(e.contains("like 15 (seconds), 500ms"), "{e}");
    }

    #[test]
    fn the_stream_rate_is_a_size_per_second_or_unlimited() {
        let rate = |args: &[&str]| parse(args).map(|a| a.max_stream_rate);
        assert_eq!(rate(&[]).unwrap(), 1 << 20);
        assert_eq!(rate(&["--max-stream-rate", "64KiB"]).unwrap(), 64 << 10);
        assert_eq!(rate(&["--max-stream-rate", "2MiB/s"]).unwrap(), 2 << 20);
        assert_eq!(rate(&["--max-stream-rate", "1000"]).unwrap(), 1000);
        for none in ["0", "unlimited", "Unlimited"] {
            assert_eq!(rate(&["--max-stream-rate", none]).unwrap(), 0, "{none}");
        }
        let e = rate(&["--max-stream-rate", "fast"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a size"), "{e}");
    }

    #[test]
    fn labels_must_be_key_value() {
        let a = parse(&["--label", "zone=a,=b"]).unwrap();
        let e = a.config().unwrap_err().to_string();
        assert_eq!(e, "--label must be key=value, not '=b'");
    }
}
