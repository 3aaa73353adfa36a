//! A leader cut off from etcd, with real processes: it gives leadership up before its lease
//! expires and lets its agent go at once, so the agent works for the new leader within seconds.

mod support;

use std::time::{Duration, Instant};

use support::fleet::{agent, wait_for_agents, Coordinator, Etcd, Proxy};
use support::*;

fn agents_of(url: &str) -> usize {
    let o = run(&["agents", "--coordinator", url]);
    stdout(&o).lines().count().saturating_sub(1)
}

#[test]
fn a_leader_cut_from_etcd_lets_its_agent_go_to_the_new_leader_within_the_lease_ttl() {
    let etcd = Etcd::start();
    let proxy = Proxy::start(etcd.endpoint.trim_start_matches("http://"));
    let (proxied, direct) = (proxy.url(), etcd.endpoint.clone());
    let old = Coordinator::start(&["--etcd", &proxied, "--lease-ttl", "3"]);
    assert!(
        eventually(Duration::from_secs(15), || old.leads()),
        "the first coordinator did not lead"
    );
    let new = Coordinator::start(&["--etcd", &direct, "--lease-ttl", "3"]);
    let coordinators = format!("{},{}", old.url, new.url);
    let _agent = agent(&coordinators, "p1", None, &[]);
    wait_for_agents(&old.url, 1);

    proxy.cut();
    let cut = Instant::now();
    // The old leader says it gave up, before the 3 s lease could expire.
    assert!(
        eventually(Duration::from_secs(3), || {
            std::fs::read_to_string(&old.log)
                .is_ok_and(|l| l.contains("giving leadership up before it expires"))
        }),
        "the old leader did not step down within the lease TTL: {}",
        std::fs::read_to_string(&old.log).unwrap_or_default()
    );
    let stepped_down = cut.elapsed();
    // The agent works for the new leader within a few seconds of the cut.
    assert!(
        eventually(Duration::from_secs(8), || new.leads()
            && agents_of(&new.url) == 1),
        "the agent never reached the new leader"
    );
    let agent_moved = cut.elapsed();
    let dir = Dir::new();
    let ff = dir.write(
        "one.factfile",
        &factfile("one", vec![task("t", "true", &[], &[])]),
    );
    let o = run(&["submit", &ff, "--coordinator", &new.url, "--wait"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    eprintln!(
        "partition: stepped down {stepped_down:?}, agent on the new leader {agent_moved:?}, \
         a new run done {:?} after the cut",
        cut.elapsed()
    );
    assert!(
        agent_moved < Duration::from_secs(6),
        "{agent_moved:?} from the cut to the agent on the new leader"
    );
}
