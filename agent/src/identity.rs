//! This machine's identity as an agent reports it: hostname and non-loopback addresses.

use std::collections::HashMap;

use factotum_common::constraint::Identity;

/// The hostname (hostname crate) and every non-loopback address (local-ip-address crate).
pub fn local(labels: HashMap<String, String>) -> Identity {
    let hostname = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut ips: Vec<_> = local_ip_address::list_afinet_netifas()
        .map(|l| {
            l.into_iter()
                .map(|(_, ip)| ip)
                .filter(|ip| !ip.is_loopback())
                .collect()
        })
        .unwrap_or_default();
    ips.sort();
    ips.dedup();
    Identity {
        hostname,
        ips,
        labels,
    }
}
