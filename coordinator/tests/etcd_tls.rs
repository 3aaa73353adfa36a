#![cfg(feature = "etcd")]
//! etcd over TLS (client certificates: `--etcd-ca`, `--etcd-cert`, `--etcd-key`) and with a user
//! and password (`--etcd-user`, `--etcd-password`), against a real etcd. The certificates are
//! made here, with rcgen: a CA, etcd's server certificate (127.0.0.1 and localhost), a client
//! certificate, and a second CA that signed nothing of etcd's.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use factotum_coordinator::etcd::{EtcdConfig, EtcdStore};
use factotum_coordinator::server::{self, Config, ServeError};
use factotum_coordinator::{Store, StoreError, StoreOp};
use factotum_proto::jobs::jobs_client::JobsClient;
use factotum_proto::jobs::{GetRunRequest, RunState, SubmitRunRequest};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio_util::sync::CancellationToken;

/// PEM files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// The CA that signed etcd's server certificate and the client certificate.
    fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }
    /// A CA that signed neither.
    fn other_ca(&self) -> PathBuf {
        self.path("other-ca.pem")
    }
    fn client(&self) -> (PathBuf, PathBuf) {
        (self.path("client.pem"), self.path("client-key.pem"))
    }
    fn server(&self) -> (PathBuf, PathBuf) {
        (self.path("server.pem"), self.path("server-key.pem"))
    }
}

fn new_ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert, Issuer::new(params, key))
}

fn leaf(
    name: &str,
    sans: &[&str],
    usages: Vec<ExtendedKeyUsagePurpose>,
    ca: &Issuer<'static, KeyPair>,
) -> (String, String) {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| std::fs::write(dir.path().join(name), pem).unwrap();
    let (ca, issuer) = new_ca("factotum test CA");
    write("ca.pem", &ca.pem());
    let (other, _) = new_ca("an unrelated CA");
    write("other-ca.pem", &other.pem());
    // etcd also dials itself with its server certificate (its gRPC gateway): client auth too.
    let (cert, key) = leaf(
        "etcd",
        &["127.0.0.1", "localhost"],
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        &issuer,
    );
    write("server.pem", &cert);
    write("server-key.pem", &key);
    let (cert, key) = leaf(
        "factotum-coordinator",
        &[],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        &issuer,
    );
    write("client.pem", &cert);
    write("client-key.pem", &key);
    Pki { dir }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An etcd serving clients over https, requiring a client certificate signed by the test CA
/// (`--client-cert-auth --trusted-ca-file`); its peer URL stays plain http.
struct TlsEtcd {
    child: Child,
    endpoint: String,
    _data: tempfile::TempDir,
}

impl TlsEtcd {
    async fn start(pki: &Pki) -> TlsEtcd {
        let data = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let c = format!("https://127.0.0.1:{client}");
        let p = format!("http://127.0.0.1:{peer}");
        let (cert, key) = pki.server();
        let child = Command::new("etcd")
            .args(["--name", "tls", "--data-dir"])
            .arg(data.path().join("data"))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args([
                "--listen-peer-urls",
                &p,
                "--initial-advertise-peer-urls",
                &p,
            ])
            .args(["--initial-cluster", &format!("tls={p}")])
            .arg("--cert-file")
            .arg(&cert)
            .arg("--key-file")
            .arg(&key)
            .arg("--client-cert-auth")
            .arg("--trusted-ca-file")
            .arg(pki.ca())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd must be installed (apt-get install etcd-server; `make test` does it)");
        let mut etcd = TlsEtcd {
            child,
            endpoint: c,
            _data: data,
        };
        etcd.wait_ready(pki).await;
        etcd
    }

    async fn wait_ready(&mut self, pki: &Pki) {
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(
                std::fs::read(pki.ca()).unwrap(),
            ))
            .identity(etcd_client::Identity::from_pem(
                std::fs::read(pki.client().0).unwrap(),
                std::fs::read(pki.client().1).unwrap(),
            ));
        let opts = etcd_client::ConnectOptions::new()
            .with_tls(tls)
            .with_timeout(Duration::from_secs(1));
        let mut last = String::new();
        for _ in 0..400 {
            match etcd_client::Client::connect([self.endpoint.as_str()], Some(opts.clone())).await {
                Ok(mut c) => match c.get("health-probe", None).await {
                    Ok(_) => return,
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "etcd (TLS) exited at start-up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "etcd at {} did not answer over TLS within 20 s: {last}",
            self.endpoint
        );
    }
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn put(k: &str, v: &str) -> StoreOp {
    StoreOp::Put {
        key: k.into(),
        value: v.as_bytes().to_vec(),
    }
}

fn tls_config(etcd: &TlsEtcd, ca: &Path, cert: Option<(PathBuf, PathBuf)>) -> EtcdConfig {
    EtcdConfig {
        endpoints: vec![etcd.endpoint.clone()],
        prefix: "/tls".into(),
        ca: Some(ca.to_path_buf()),
        cert,
        ..Default::default()
    }
}

/// The error of connecting with `cfg`, or else of its first request.
async fn first_error(cfg: &EtcdConfig) -> StoreError {
    let attempt = async {
        let store = EtcdStore::connect(cfg).await?;
        store.commit(vec![put("k", "v")]).await?;
        store.scan("").await
    };
    match tokio::time::timeout(Duration::from_secs(15), attempt)
        .await
        .expect("a refused connection hung instead of failing")
    {
        Err(e) => e,
        Ok(got) => panic!("etcd should have refused this client, yet it answered {got:?}"),
    }
}

#[tokio::test]
async fn mutual_tls_with_the_right_ca_and_a_client_certificate_commits_and_scans() {
    let pki = pki();
    let etcd = TlsEtcd::start(&pki).await;
    let store = EtcdStore::connect(&tls_config(&etcd, &pki.ca(), Some(pki.client())))
        .await
        .unwrap();
    store
        .commit(vec![
            put("runs/r1/state", "RUNNING"),
            put("runs/r2/state", "WAITING"),
        ])
        .await
        .unwrap();
    let got = store.scan("runs/").await.unwrap();
    assert_eq!(
        got,
        vec![
            ("runs/r1/state".to_string(), b"RUNNING".to_vec()),
            ("runs/r2/state".to_string(), b"WAITING".to_vec()),
        ]
    );
    let page = store.scan_page("runs/", Some("runs/r1/state"), 10).await;
    assert_eq!(page.unwrap().len(), 1);
}

#[tokio::test]
async fn a_wrong_ca_is_refused_with_an_error_saying_etcds_certificate_was_not_verified() {
    let pki = pki();
    let etcd = TlsEtcd::start(&pki).await;
    let err = first_error(&tls_config(&etcd, &pki.other_ca(), Some(pki.client()))).await;
    println!("wrong CA: {err}");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("etcd's TLS certificate could not be verified")
            && text.contains("not signed by the CA given with --etcd-ca")
            && text.contains("UnknownIssuer"),
        "{text}"
    );
    // An https URL and no CA at all: the same.
    let no_ca = EtcdConfig {
        endpoints: vec![etcd.endpoint.clone()],
        ..Default::default()
    };
    let err = first_error(&no_ca).await;
    println!("no CA: {err}");
    assert!(
        err.to_string()
            .contains("etcd's TLS certificate could not be verified"),
        "{err}"
    );
    // TLS files with an http:// URL.
    let mut plain = tls_config(&etcd, &pki.ca(), Some(pki.client()));
    plain.endpoints = vec![etcd.endpoint.replace("https://", "http://")];
    let err = first_error(&plain).await;
    println!("http URL with TLS files: {err}");
    assert!(err.to_string().contains("need https:// etcd URLs"), "{err}");
}

#[tokio::test]
async fn no_client_certificate_or_an_untrusted_one_is_refused_clearly() {
    let pki = pki();
    let etcd = TlsEtcd::start(&pki).await;
    // A client certificate signed by a CA etcd does not trust.
    let (_, stranger) = new_ca("a stranger's CA");
    let (cert, key) = leaf(
        "stranger",
        &[],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        &stranger,
    );
    let untrusted = (pki.path("stranger.pem"), pki.path("stranger-key.pem"));
    std::fs::write(&untrusted.0, cert).unwrap();
    std::fs::write(&untrusted.1, key).unwrap();
    for (what, cert) in [("none", None), ("untrusted", Some(untrusted))] {
        let err = first_error(&tls_config(&etcd, &pki.ca(), cert)).await;
        println!("client certificate {what}: {err}");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        // Over TLS 1.3 the client learns of it after its handshake: either from etcd's alert,
        // or only as the connection closing (whichever the request meets first).
        let text = err.to_string();
        assert!(
            (text.contains(
                "etcd refused this client's TLS certificate (received fatal alert: BadCertificate)"
            ) || text.contains("etcd closed the connection"))
                && text.contains("--client-cert-auth")
                && text.contains("--etcd-cert and --etcd-key"),
            "client certificate {what}: {text}"
        );
    }
}

/// A plain etcd with authentication on: user `root` (role root) with `password`.
async fn etcd_with_auth(password: &str) -> support::Etcd {
    let etcd = support::Etcd::start().await;
    let mut c = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
        .await
        .unwrap();
    c.user_add("root", password, None).await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    c.auth_enable().await.unwrap();
    etcd
}

#[tokio::test]
async fn a_user_and_password_are_used_and_a_wrong_password_is_refused_clearly() {
    let etcd = etcd_with_auth("s3cret pass").await;
    let cfg = |user: Option<(&str, &str)>| EtcdConfig {
        endpoints: vec![etcd.endpoint.clone()],
        prefix: "/auth".into(),
        user: user.map(|(u, p)| (u.to_string(), p.to_string())),
        ..Default::default()
    };
    let store = EtcdStore::connect(&cfg(Some(("root", "s3cret pass"))))
        .await
        .unwrap();
    store.commit(vec![put("k", "v")]).await.unwrap();
    assert_eq!(
        store.scan("").await.unwrap(),
        vec![("k".to_string(), b"v".to_vec())]
    );

    let err = first_error(&cfg(Some(("root", "wrong")))).await;
    println!("wrong password: {err}");
    assert!(
        err.to_string().contains(
            "etcd refused the user or password (--etcd-user, --etcd-password): \
             etcdserver: authentication failed, invalid user ID or password"
        ),
        "{err}"
    );
    let err = first_error(&cfg(Some(("nobody", "s3cret pass")))).await;
    println!("unknown user: {err}");
    assert!(err.to_string().contains("authentication failed"), "{err}");
    let err = first_error(&cfg(None)).await;
    println!("no user: {err}");
    assert!(
        err.to_string()
            .contains("etcd requires authentication: give --etcd-user and --etcd-password"),
        "{err}"
    );

    // The coordinator's flags: it leads with them.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let cfg = coordinator_config(&[
        "--etcd",
        &etcd.endpoint,
        "--etcd-user",
        "root",
        "--etcd-password",
        "s3cret pass",
    ]);
    let served = tokio::spawn(server::run(cfg, listener, shutdown.clone()));
    assert!(
        eventually_leads(addr, Duration::from_secs(10)).await,
        "a coordinator with --etcd-user/--etcd-password never led"
    );
    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(15), served)
        .await
        .expect("run did not return after shutdown")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}

fn coordinator_config(extra: &[&str]) -> Config {
    let mut args = vec![
        "factotum-coordinator",
        "--listen",
        "127.0.0.1:0",
        "--lease-ttl",
        "2s",
    ];
    args.extend_from_slice(extra);
    Config::try_parse_from(args).unwrap()
}

async fn eventually_leads(addr: std::net::SocketAddr, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if support::leads(addr).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A coordinator in this process on the TLS etcd, given the flags.
async fn tls_coordinator(
    etcd: &TlsEtcd,
    pki: &Pki,
    shutdown: &CancellationToken,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<Result<(), ServeError>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ca, (cert, key)) = (pki.ca(), pki.client());
    let cfg = coordinator_config(&[
        "--etcd",
        &etcd.endpoint,
        "--etcd-ca",
        ca.to_str().unwrap(),
        "--etcd-cert",
        cert.to_str().unwrap(),
        "--etcd-key",
        key.to_str().unwrap(),
    ]);
    (
        addr,
        tokio::spawn(server::run(cfg, listener, shutdown.clone())),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_over_mutual_tls_hand_over_leadership_and_keep_the_runs() {
    let pki = pki();
    let etcd = TlsEtcd::start(&pki).await;
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let (a, served_a) = tls_coordinator(&etcd, &pki, &stop_a).await;
    assert!(
        eventually_leads(a, Duration::from_secs(10)).await,
        "the first coordinator never led over TLS"
    );
    let (b, served_b) = tls_coordinator(&etcd, &pki, &stop_b).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!support::leads(b).await, "two leaders");

    // No agent: the run waits.
    let mut jobs = JobsClient::connect(format!("http://{a}")).await.unwrap();
    let run_id = jobs
        .submit_run(SubmitRunRequest {
            factfile: support::ONE_TASK.into(),
            ..Default::default()
        })
        .await
        .expect("a submit to the leader")
        .into_inner()
        .run_id;

    stop_a.cancel();
    let result = tokio::time::timeout(Duration::from_secs(15), served_a)
        .await
        .expect("the first coordinator did not return after shutdown")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    // It resigned: the other takes over without waiting out the lease.
    let took_over = Instant::now();
    assert!(
        eventually_leads(b, Duration::from_secs(10)).await,
        "the second coordinator never took over"
    );
    println!("took over in {:?}", took_over.elapsed());

    let mut jobs = JobsClient::connect(format!("http://{b}")).await.unwrap();
    let run = jobs
        .get_run(GetRunRequest {
            run_id: run_id.clone(),
        })
        .await
        .expect("the run submitted to the first leader, at the second")
        .into_inner();
    assert_eq!(run.run_id, run_id);
    assert_eq!(run.state, RunState::Waiting as i32, "{run:?}");

    stop_b.cancel();
    let result = tokio::time::timeout(Duration::from_secs(15), served_b)
        .await
        .expect("the second coordinator did not return after shutdown")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}
