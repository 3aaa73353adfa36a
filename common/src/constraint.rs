//! Host constraints (`--constraint host,<value>`), matched over an identity the caller gathered.

use std::net::IpAddr;

/// What a machine is, for matching: its hostname and its non-loopback addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub hostname: String,
    pub ips: Vec<IpAddr>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_rules() {
        let me = Identity {
            hostname: "etl-3".into(),
            ips: vec!["10.1.2.3".parse().unwrap(), "127.0.0.1".parse().unwrap()],
        };
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
}
