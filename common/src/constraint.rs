//! Placement constraints, matched over an identity the caller gathered (no IO here: names are
//! resolved by the caller and passed in).

use std::collections::HashMap;
use std::net::IpAddr;

/// How a run's tasks are spread over agents: the one shape of this choice, from the factfile's
/// `placement` through the engine and the store's records to the CLI's `--placement`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub enum Placement {
    /// Every task goes to the agent that took the run's first task, while it is connected
    /// (Factotum's "a job runs on one box").
    #[default]
    Sticky,
    /// Each task goes to any eligible agent with a free slot.
    Spread,
}

impl Placement {
    pub const NAMES: [&'static str; 2] = ["sticky", "spread"];

    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Sticky => "sticky",
            Placement::Spread => "spread",
        }
    }
}

impl std::str::FromStr for Placement {
    type Err = String;
    fn from_str(s: &str) -> Result<Placement, String> {
        match s {
            "sticky" => Ok(Placement::Sticky),
            "spread" => Ok(Placement::Spread),
            _ => Err(format!("'{s}' is not a placement: sticky or spread")),
        }
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a machine is, for matching: its hostname, non-loopback addresses and labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub hostname: String,
    pub ips: Vec<IpAddr>,
    pub labels: HashMap<String, String>,
}

/// One rule a run (or task) places on the agent that runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Constraint {
    /// `host,<value>`; `resolved` holds the addresses `value` resolved to (looked up by the caller).
    Host {
        value: String,
        resolved: Vec<IpAddr>,
    },
    /// `label,<key>=<value>`.
    Label { key: String, value: String },
}

impl Constraint {
    pub fn matches(&self, me: &Identity) -> bool {
        match self {
            Constraint::Host { value, resolved } => host_matches(value, me, resolved),
            Constraint::Label { key, value } => me.labels.get(key) == Some(value),
        }
    }
}

impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Constraint::Host { value, .. } => write!(f, "host={value}"),
            Constraint::Label { key, value } => write!(f, "label {key}={value}"),
        }
    }
}

/// Factotum's rule: `*`, the exact hostname, or a name/IP whose resolved addresses (`resolved`,
/// looked up by the caller) include one of the machine's non-loopback addresses. Loopback never
/// matches, so `localhost` and `127.0.0.1` don't.
pub fn host_matches(value: &str, me: &Identity, resolved: &[IpAddr]) -> bool {
    if value == "*" || value == me.hostname {
        return true;
    }
    resolved
        .iter()
        .filter(|ip| !ip.is_loopback())
        .any(|ip| me.ips.iter().any(|mine| mine == ip && !mine.is_loopback()))
}

/// Parses `--constraint` text: `host,<value>` or `label,<key>=<value>`. Host values come back
/// unresolved (`resolved` empty) for the caller to fill.
pub fn parse(raw: &str) -> Result<Constraint, String> {
    let (kind, value) = raw.split_once(',').unwrap_or((raw, ""));
    let (kind, value) = (kind.trim(), value.trim());
    match kind {
        "host" if !value.is_empty() => Ok(Constraint::Host {
            value: value.to_string(),
            resolved: vec![],
        }),
        "label" => match value.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok(Constraint::Label {
                key: k.trim().to_string(),
                value: v.trim().to_string(),
            }),
            _ => Err(format!(
                "the constraint \"{raw}\" must be label,<key>=<value>"
            )),
        },
        "host" => Err(format!("the constraint \"{raw}\" must be host,<value>")),
        _ => Err(format!(
            "unknown constraint \"{kind}\" in \"{raw}\": use host,<value> or label,<key>=<value>"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Identity {
        Identity {
            hostname: "etl-3".into(),
            ips: vec!["10.1.2.3".parse().unwrap(), "127.0.0.1".parse().unwrap()],
            labels: HashMap::from([("zone".to_string(), "eu".to_string())]),
        }
    }

    #[test]
    fn host_matching_rules() {
        let me = me();
        assert!(host_matches("*", &me, &[]));
        assert!(host_matches("etl-3", &me, &[]));
        assert!(!host_matches("etl-4", &me, &[]));
        assert!(host_matches(
            "10.1.2.3",
            &me,
            &["10.1.2.3".parse().unwrap()]
        ));
        assert!(!host_matches(
            "localhost",
            &me,
            &["127.0.0.1".parse().unwrap()]
        ));
        assert!(!host_matches(
            "10.9.9.9",
            &me,
            &["10.9.9.9".parse().unwrap()]
        ));
    }

    #[test]
    fn parsing_and_labels() {
        let me = me();
        assert!(parse("label,zone=eu").unwrap().matches(&me));
        assert!(!parse("label, zone = us").unwrap().matches(&me));
        assert!(parse("host,etl-3").unwrap().matches(&me));
        assert!(parse("rack,7")
            .unwrap_err()
            .starts_with("unknown constraint \"rack\""));
        assert!(parse("label,novalue").is_err());
        assert!(parse("host,").is_err());
        assert_eq!(parse("host,etl-9").unwrap().to_string(), "host=etl-9");
    }
}
