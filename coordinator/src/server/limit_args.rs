//! The coordinator's limits: what one submission may hold, and how much the API takes on at once.

use std::time::Duration;

use factotum_service::DurationRange;

use crate::api;

/// The flags that bound submissions and the API's load (flattened into [`super::Config`]).
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// The most one templated factfile field may render to (`--env` and tags applied); a larger
    /// one is refused as an invalid factfile. Sizes take units (`512KiB`, `1MiB`); a bare number
    /// is bytes.
    #[arg(long, env = "FACTOTUM_MAX_RENDERED_SIZE", value_name = "BYTES", default_value = "1MiB",
          value_parser = factotum_service::size::at_least(1))]
    pub max_rendered_size: usize,
    /// The most all of a factfile's templated fields may render to together.
    #[arg(long, env = "FACTOTUM_MAX_RENDERED_TOTAL", value_name = "BYTES", default_value = "64MiB",
          value_parser = factotum_service::size::at_least(1))]
    pub max_rendered_total: usize,
    /// The largest factfile a submission may carry. Sizes take units (`512KiB`, `32MiB`).
    #[arg(long, env = "FACTOTUM_MAX_FACTFILE_SIZE", value_name = "BYTES", default_value = "32MiB",
          value_parser = factotum_service::size::at_least(1024))]
    pub max_factfile_size: usize,
    /// The most tasks a submitted factfile may have.
    #[arg(long, env = "FACTOTUM_MAX_TASKS", value_name = "TASKS", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_tasks: u64,
    /// The most webhook URLs one submission may name (the coordinator's own --webhook URLs
    /// do not count).
    #[arg(
        long,
        env = "FACTOTUM_MAX_WEBHOOKS",
        value_name = "URLS",
        default_value_t = 16
    )]
    pub max_webhooks: usize,
    /// The largest gRPC message this coordinator sends or accepts (agents and clients); a
    /// task whose lease would take more than half of it is refused at submit. Set the agents'
    /// `--max-message-size` to the same value.
    #[arg(long, env = "FACTOTUM_MAX_MESSAGE_SIZE", value_name = "BYTES", default_value = "16MiB",
          value_parser = factotum_service::size::at_least(factotum_common::run::MIN_MAX_MESSAGE as u64))]
    pub max_message_size: usize,
    /// `SubmitRun`/`RerunRun` calls being prepared or committed at once; more get
    /// RESOURCE_EXHAUSTED at once ("retry shortly") rather than queuing without bound.
    #[arg(long, env = "FACTOTUM_MAX_PENDING_SUBMITS", value_name = "CALLS", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending_submits: u32,
    /// Client calls waiting for the engine, at most; past it a call gets RESOURCE_EXHAUSTED at
    /// once ("retry shortly"): a flood of calls is refused, never queued without bound.
    #[arg(long, env = "FACTOTUM_MAX_QUEUED_CALLS", value_name = "CALLS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_queued_calls: u32,
    /// Open `WatchRun` streams (`watch`, `submit --wait`), at most; one more gets
    /// RESOURCE_EXHAUSTED. Each holds at most --watch-buffer of output.
    #[arg(long, env = "FACTOTUM_MAX_WATCHES", value_name = "STREAMS", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_watches: u32,
    /// A connection whose peer sends nothing for this long is closed (one that never speaks
    /// HTTP/2 included); live clients answer the keepalive pings sent every 10s (or twice per
    /// timeout, if shorter).
    #[arg(long, env = "FACTOTUM_IDLE_TIMEOUT", value_name = "DURATION", default_value = "5m",
          value_parser = DurationRange::from(Duration::from_secs(1)).parser())]
    pub idle_timeout: Duration,
}

impl LimitArgs {
    /// `--max-rendered-size` and `--max-rendered-total`.
    pub fn render_limits(&self) -> factotum_common::template::Limits {
        factotum_common::template::Limits {
            field: self.max_rendered_size,
            total: self.max_rendered_total,
        }
    }

    /// What the API serves within.
    pub fn serve(&self) -> api::ServeLimits {
        api::ServeLimits {
            render: self.render_limits(),
            input: crate::spec::InputLimits {
                max_size: self.max_factfile_size,
                max_tasks: usize::try_from(self.max_tasks).unwrap_or(usize::MAX),
                max_webhooks: self.max_webhooks,
            },
            max_message: self.max_message_size,
            max_pending_submits: self.max_pending_submits as usize,
            max_watches: self.max_watches as usize,
            idle_timeout: self.idle_timeout,
        }
    }
}
