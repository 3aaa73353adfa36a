//! This machine's identity (hostname, non-loopback addresses) and `--constraint` checks.

use std::net::{IpAddr, ToSocketAddrs};

use factotum_common::constraint::{host_matches, Identity};

pub fn identity() -> Identity {
    let hostname = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ips = local_ip_address::list_afinet_netifas()
        .map(|l| {
            l.into_iter()
                .map(|(_, ip)| ip)
                .filter(|ip| !ip.is_loopback())
                .collect()
        })
        .unwrap_or_default();
    Identity { hostname, ips }
}

/// `Ok(())` when this machine satisfies `host,<value>`, else why not.
pub fn check_host(value: &str, me: &Identity) -> Result<(), String> {
    let resolved: Vec<IpAddr> = match value.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => (value, 0)
            .to_socket_addrs()
            .map(|a| a.map(|s| s.ip()).collect())
            .unwrap_or_default(),
    };
    if host_matches(value, me, &resolved) {
        return Ok(());
    }
    Err(format!(
        "this host is '{}' with addresses [{}], and '{value}' is neither '*', that hostname, nor a name or address of one of those addresses",
        me.hostname,
        me.ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
    ))
}
