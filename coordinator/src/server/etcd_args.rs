//! The coordinator's etcd flags: where runs are recorded, and how to reach it.

use std::path::PathBuf;

use crate::etcd::EtcdConfig;

/// `--etcd` and the flags that say how to reach it (flattened into [`super::Config`]).
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdArgs {
    /// etcd client URLs (comma-separated): runs are recorded there and survive restarts.
    /// Without it, runs live in this process's memory only.
    #[arg(long, env = "FACTOTUM_ETCD", value_delimiter = ',', value_name = "URL")]
    pub etcd: Vec<String>,
    /// Key prefix in etcd (coordinators sharing it share their runs).
    #[arg(long, env = "FACTOTUM_ETCD_PREFIX", default_value = "/factotum")]
    pub etcd_prefix: String,
    /// etcd user (with --etcd-password).
    #[arg(long, env = "FACTOTUM_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// etcd password (with --etcd-user). Prefer the variable or a config file: a flag shows
    /// in `ps`.
    #[arg(long, env = "FACTOTUM_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    /// CA certificate (PEM) to trust for https:// etcd URLs.
    #[arg(long, env = "FACTOTUM_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for etcd mutual TLS.
    #[arg(long, env = "FACTOTUM_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The private key (PEM) of --etcd-cert.
    #[arg(long, env = "FACTOTUM_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}

impl EtcdArgs {
    /// How to reach etcd, as the store takes it.
    pub fn config(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: self.etcd.clone(),
            prefix: self.etcd_prefix.clone(),
            user: self
                .etcd_user
                .clone()
                .map(|u| (u, self.etcd_password.clone().unwrap_or_default())),
            ca: self.etcd_ca.clone(),
            cert: self.etcd_cert.clone().zip(self.etcd_key.clone()),
        }
    }
}
