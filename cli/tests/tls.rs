//! TLS on the gRPC port, with real certificates made by `factotum-coordinator certs` (issue 12):
//! agents with a certificate naming them run tasks; a certificate from another CA, or one
//! naming another agent, is refused; a plaintext client is told to use https; SIGHUP picks up
//! new certificates while the open sessions stay up; a client certificate counts through a
//! follower, which only a coordinator's certificate may vouch for.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::fleet::{sibling, Coordinator, Etcd, Proc};
use support::*;

/// `factotum-coordinator certs` into `dir` for 127.0.0.1 and these agents.
fn certs(dir: &Path, agents: &[&str]) {
    let mut args = vec![
        "certs",
        "--out",
        dir.to_str().unwrap(),
        "--host",
        "127.0.0.1",
    ];
    for a in agents {
        args.extend(["--agent", a]);
    }
    let o = Command::new(sibling("factotum-coordinator"))
        .args(&args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn path(dir: &Path, rel: &str) -> String {
    dir.join(rel).to_string_lossy().into_owned()
}

/// `factotum <args> --coordinator <url> --tls-ca <ca>`.
fn client(args: &[&str], url: &str, ca: &str) -> Output {
    let mut all = args.to_vec();
    all.extend(["--coordinator", url, "--tls-ca", ca]);
    run(&all)
}

/// An agent on `url` named `name` with the certificate in `cert_dir`, logging to `log`.
fn tls_agent(url: &str, name: &str, ca: &str, cert_dir: &Path, log: &Path) -> Proc {
    let child = Command::new(sibling("factotum-agent"))
        .args(["--coordinator", url, "--name", name, "--drain-grace", "5"])
        .args(["--tls-ca", ca])
        .args(["--tls-cert", &path(cert_dir, "tls.crt")])
        .args(["--tls-key", &path(cert_dir, "tls.key")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Proc(child)
}

fn agents(url: &str, ca: &str) -> String {
    stdout(&client(&["agents"], url, ca))
}

#[test]
fn agents_with_their_own_certificates_run_tasks_and_others_are_refused() {
    let d = Dir::new();
    let pki = d.file("pki");
    certs(&pki, &["good", "other"]);
    let ca = path(&pki, "ca.crt");
    let c = Coordinator::start(&[
        "--tls-cert",
        &path(&pki, "server/tls.crt"),
        "--tls-key",
        &path(&pki, "server/tls.key"),
        "--tls-client-ca",
        &ca,
    ]);
    let url = c.url.replacen("http://", "https://", 1);
    let good_log = d.file("good.log");
    let _good = tls_agent(&url, "good", &ca, &pki.join("agents/good"), &good_log);
    assert!(
        eventually(Duration::from_secs(20), || agents(&url, &ca)
            .contains("good")),
        "the agent with its own certificate never connected: {}",
        std::fs::read_to_string(&good_log).unwrap_or_default()
    );
    let ff = d.write(
        "hello.factfile",
        &factfile("tls hello", vec![task("t", "echo over-tls", &[], &[])]),
    );
    let o = client(&["submit", &ff, "--wait"], &url, &ca);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("[t] over-tls"), "{}", stdout(&o));

    // An agent whose certificate names another agent.
    let liar_log = d.file("liar.log");
    let _liar = tls_agent(&url, "liar", &ca, &pki.join("agents/other"), &liar_log);
    assert!(
        eventually(Duration::from_secs(20), || std::fs::read_to_string(
            &liar_log
        )
        .is_ok_and(
            |l| l.contains("the agent says it is 'liar' but its certificate is for other")
        )),
        "{}",
        std::fs::read_to_string(&liar_log).unwrap_or_default()
    );
    // An agent whose certificate comes from another CA: the handshake fails.
    let stranger_pki = d.file("stranger");
    certs(&stranger_pki, &["stranger"]);
    let stranger_log = d.file("stranger.log");
    let _stranger = tls_agent(
        &url,
        "stranger",
        &ca,
        &stranger_pki.join("agents/stranger"),
        &stranger_log,
    );
    assert!(
        eventually(Duration::from_secs(20), || std::fs::read_to_string(&c.log)
            .is_ok_and(|l| l.contains("TLS handshake refused"))),
        "{}",
        std::fs::read_to_string(&c.log).unwrap_or_default()
    );
    std::thread::sleep(Duration::from_secs(1));
    let listed = agents(&url, &ca);
    assert!(listed.contains("good"), "{listed}");
    assert!(
        !listed.contains("liar") && !listed.contains("stranger"),
        "{listed}"
    );

    // A plaintext client on the TLS port: a clear refusal, exit 4.
    let o = run(&["runs", "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("use an https:// URL"), "{}", stderr(&o));
    // A client that does not trust the coordinator's CA.
    let o = client(&["runs"], &url, &path(&stranger_pki, "ca.crt"));
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
}

#[test]
fn sighup_picks_up_new_certificates_and_open_sessions_stay_up() {
    let d = Dir::new();
    let (old, new) = (d.file("old"), d.file("new"));
    certs(&old, &["steady"]);
    certs(&new, &["steady"]);
    // The coordinator reads its files from `live`, where the new ones are copied later.
    let live = d.file("live");
    let copy_in = |from: &PathBuf| {
        std::fs::create_dir_all(live.join("server")).unwrap();
        for f in ["ca.crt", "server/tls.crt", "server/tls.key"] {
            std::fs::copy(from.join(f), live.join(f)).unwrap();
        }
    };
    copy_in(&old);
    let c = Coordinator::start(&[
        "--tls-cert",
        &path(&live, "server/tls.crt"),
        "--tls-key",
        &path(&live, "server/tls.key"),
        "--tls-client-ca",
        &path(&live, "ca.crt"),
    ]);
    let url = c.url.replacen("http://", "https://", 1);
    let (old_ca, new_ca) = (path(&old, "ca.crt"), path(&new, "ca.crt"));
    let log = d.file("steady.log");
    let _steady = tls_agent(&url, "steady", &old_ca, &old.join("agents/steady"), &log);
    assert!(eventually(Duration::from_secs(20), || agents(
        &url, &old_ca
    )
    .contains("steady")));
    copy_in(&new);
    // Until SIGHUP the old certificate is served.
    assert_eq!(client(&["runs"], &url, &new_ca).status.code(), Some(4));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.proc.pid()),
        nix::sys::signal::SIGHUP,
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || client(&["runs"], &url, &new_ca)
            .status
            .success()),
        "the new certificate is not served after SIGHUP: {}",
        std::fs::read_to_string(&c.log).unwrap_or_default()
    );
    // The agent's session, made with the old certificates, is still up.
    let listed = stdout(&client(&["agents"], &url, &new_ca));
    assert!(
        listed.contains("steady") && listed.contains("connected"),
        "{listed}"
    );
    assert!(std::fs::read_to_string(&c.log)
        .unwrap()
        .contains("TLS certificates and CAs re-read"));
}

/// `factotum <args>` on `url` with the CLI certificate (or `cert_dir`'s) and the fleet's CA.
fn with_cert(args: &[&str], url: &str, pki: &Path, cert_dir: &str) -> Output {
    let mut all = args.to_vec();
    let (ca, cert, key) = (
        path(pki, "ca.crt"),
        path(pki, &format!("{cert_dir}/tls.crt")),
        path(pki, &format!("{cert_dir}/tls.key")),
    );
    all.extend(["--coordinator", url, "--tls-ca", &ca]);
    all.extend(["--tls-cert", &cert, "--tls-key", &key]);
    run(&all)
}

#[test]
fn a_client_certificate_counts_through_a_follower_and_only_coordinators_vouch_for_callers() {
    let etcd = Etcd::start();
    let d = Dir::new();
    let pki = d.file("pki");
    certs(&pki, &["etl-1"]);
    let tokens = d.write("tokens", "cert:factotum-cli read,submit cli\n");
    let (cert, key, ca) = (
        path(&pki, "server/tls.crt"),
        path(&pki, "server/tls.key"),
        path(&pki, "ca.crt"),
    );
    let args = [
        "--etcd",
        etcd.endpoint.as_str(),
        "--lease-ttl",
        "2",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &ca,
        "--tokens",
        &tokens,
    ];
    let leader = Coordinator::start(&args);
    assert!(eventually(Duration::from_secs(10), || leader.leads()));
    let follower = Coordinator::start(&args);
    let (leader_url, follower_url) = (
        leader.url.replacen("http://", "https://", 1),
        follower.url.replacen("http://", "https://", 1),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(!follower.leads());

    // The CLI's certificate, listed in --tokens, through the follower: the leader takes the
    // follower's word for who called, because the follower's certificate is a coordinator's.
    let ff = d.write(
        "waits.factfile",
        &factfile("cert client", vec![task("t", "true", &[], &[])]),
    );
    let o = with_cert(&["submit", &ff], &follower_url, &pki, "cli");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = with_cert(&["runs"], &follower_url, &pki, "cli");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("cert client"), "{}", stdout(&o));
    // An agent's certificate is not listed: refused through the follower, naming it.
    let o = with_cert(&["runs"], &follower_url, &pki, "agents/etl-1");
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the client certificate 'etl-1' is not listed in --tokens"),
        "{}",
        stderr(&o)
    );

    // A caller that is not a coordinator cannot say whom it calls for: the header is ignored.
    let forged = tokio::runtime::Runtime::new().unwrap().block_on(async {
        use factotum_proto::jobs::{jobs_client::JobsClient, ListRunsRequest};
        let agent_dir = pki.join("agents/etl-1");
        let tls = factotum_service::tls::client_config(
            Some(&pki.join("ca.crt")),
            Some((&agent_dir.join("tls.crt"), &agent_dir.join("tls.key"))),
        )
        .unwrap();
        let channel = tonic::transport::Endpoint::from_shared(leader_url.clone())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut request = tonic::Request::new(ListRunsRequest::default());
        let forwarded = factotum_coordinator::api::forward::FORWARDED_CLIENT;
        request
            .metadata_mut()
            .insert(forwarded, "factotum-cli".parse().unwrap());
        JobsClient::new(channel).list_runs(request).await
    });
    let refused = forged.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("'etl-1'"), "{refused:?}");
}
