//! Real coordinators and agents as child processes, for the fleet tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A binary of this workspace, next to `factotum` in the target dir.
pub fn sibling(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_factotum")).with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: build every binary first (`cargo build --workspace --bins`; `make test` does)",
        p.display()
    );
    p
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

pub struct Coordinator {
    pub proc: Proc,
    pub url: String,
    /// Its log (stderr).
    pub log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Coordinator {
    /// Starts `factotum-coordinator --listen 127.0.0.1:0 <extra>` and reads its port.
    pub fn start(extra: &[&str]) -> Coordinator {
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("coordinator.log");
        let default_listen: &[&str] = if extra.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        // Many coordinators run at once: none takes the default HTTP port.
        let default_http: &[&str] = if extra.contains(&"--http-listen") {
            &[]
        } else {
            &["--http-listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(sibling("factotum-coordinator"))
            .args(default_listen)
            .args(default_http)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the coordinator starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Coordinator {
            url: format!("http://{addr}"),
            proc: Proc(child),
            log,
            _log_dir: log_dir,
        }
    }
}

/// Starts an agent named `name`; with `hostname`, inside its own UTS namespace with that hostname.
pub fn agent(coordinator: &str, name: &str, hostname: Option<&str>, extra: &[&str]) -> Proc {
    let bin = sibling("factotum-agent");
    let mut cmd = match hostname {
        Some(h) => {
            let mut c = Command::new("unshare");
            c.args([
                "--uts",
                "sh",
                "-c",
                &format!("hostname '{h}' && exec \"$0\" \"$@\""),
            ])
            .arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    cmd.args(["--coordinator", coordinator, "--name", name])
        .args(if extra.contains(&"--drain-grace") {
            &[][..]
        } else {
            &["--drain-grace", "5"][..]
        })
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Proc(cmd.spawn().expect("the agent starts"))
}

/// Waits until `factotum agents` lists `n` agents.
pub fn wait_for_agents(url: &str, n: usize) {
    let ok = super::eventually(Duration::from_secs(20), || {
        let o = super::run(&["agents", "--coordinator", url]);
        super::stdout(&o).lines().count() == n + 1
    });
    assert!(
        ok,
        "{n} agents never connected: {}",
        super::stdout(&super::run(&["agents", "--coordinator", url]))
    );
}

/// A TCP proxy on 127.0.0.1 that can cut every connection and come back on the same port: a
/// network outage between an agent and its coordinator.
pub struct Proxy {
    pub port: u16,
    upstream: String,
    state: std::sync::Arc<std::sync::Mutex<ProxyState>>,
}

#[derive(Default)]
struct ProxyState {
    generation: u64,
    sockets: Vec<std::net::TcpStream>,
}

impl Proxy {
    /// Proxies to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = Proxy {
            port,
            upstream: upstream.to_string(),
            state: Default::default(),
        };
        p.serve(listener, 0);
        p
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn serve(&self, listener: std::net::TcpListener, generation: u64) {
        let (state, upstream) = (self.state.clone(), self.upstream.clone());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || loop {
            if state.lock().unwrap().generation != generation {
                return; // cut: stop accepting (the listener closes)
            }
            match listener.accept() {
                Ok((down, _)) => {
                    down.set_nonblocking(false).unwrap();
                    let Ok(up) = std::net::TcpStream::connect(&upstream) else {
                        continue;
                    };
                    let _ = down.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let mut st = state.lock().unwrap();
                    st.sockets.push(down.try_clone().unwrap());
                    st.sockets.push(up.try_clone().unwrap());
                    drop(st);
                    for (mut from, mut to) in [
                        (down.try_clone().unwrap(), up.try_clone().unwrap()),
                        (up, down),
                    ] {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Both);
                        });
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        });
    }

    /// Closes every connection and stops listening.
    pub fn cut(&self) {
        let mut st = self.state.lock().unwrap();
        st.generation += 1;
        for s in st.sockets.drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Listens again on the same port.
    pub fn restore(&self) {
        let generation = self.state.lock().unwrap().generation;
        let listener = loop {
            match std::net::TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        self.serve(listener, generation);
    }
}

/// A real etcd: its own process, ephemeral client and peer ports, a temp data dir.
pub struct Etcd {
    pub proc: Proc,
    pub endpoint: String,
    ports: (u16, u16),
    dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts etcd and waits until it is healthy. Fails loudly when etcd is not installed.
    pub fn start() -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let ports = (port(), port());
        let proc = Self::spawn(&dir, ports);
        Etcd {
            proc,
            endpoint: format!("http://127.0.0.1:{}", ports.0),
            ports,
            dir,
        }
    }

    /// Kills etcd (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.proc.0.kill();
        let _ = self.proc.0.wait();
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.proc = Self::spawn(&self.dir, self.ports);
    }

    fn spawn(dir: &tempfile::TempDir, (client, peer): (u16, u16)) -> Proc {
        let c = format!("http://127.0.0.1:{client}");
        let p = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args([
                "--listen-peer-urls",
                &p,
                "--initial-advertise-peer-urls",
                &p,
            ])
            .args(["--initial-cluster", &format!("test={p}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd must be installed (apt-get install etcd-server; `make test` does it)");
        let healthy = super::eventually(Duration::from_secs(20), || {
            use std::io::{Read, Write};
            let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", client)) else {
                return false;
            };
            let _ = s.write_all(b"GET /health HTTP/1.0\r\n\r\n");
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            body.contains("\"health\":\"true\"")
        });
        assert!(healthy, "etcd did not become healthy");
        Proc(child)
    }
}

impl Coordinator {
    /// Whether this coordinator has become the leader (it logs `leading`).
    pub fn leads(&self) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains(" leading"))
    }

    /// The port this coordinator listens on.
    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }
}

/// One `GET path` to `127.0.0.1:port` (HTTP/1.0, 2 s timeouts): the response, or None.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// One member of an [`EtcdCluster`].
struct Member {
    name: String,
    client: u16,
    peer: u16,
    proc: Option<Proc>,
}

/// A real 3-member etcd cluster of `etcd` processes on loopback: ephemeral client and peer
/// ports, a temp data dir (and a log) per member.
pub struct EtcdCluster {
    members: Vec<Member>,
    initial: String,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts three members and waits until each is healthy (the cluster has a raft leader).
    /// Fails loudly when etcd is not installed.
    pub fn start() -> EtcdCluster {
        let dir = tempfile::tempdir().unwrap();
        // Six distinct ports: every listener is held until all are chosen.
        let held: Vec<std::net::TcpListener> = (0..6)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(held);
        let members: Vec<Member> = (0..3)
            .map(|i| Member {
                name: format!("m{i}"),
                client: ports[2 * i],
                peer: ports[2 * i + 1],
                proc: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = EtcdCluster {
            members,
            initial,
            dir,
        };
        for i in 0..3 {
            c.spawn(i);
        }
        for i in 0..3 {
            c.wait_healthy(i);
        }
        c
    }

    /// Every member's client URL, comma-separated (what `--etcd` takes).
    pub fn endpoints(&self) -> String {
        (0..self.members.len())
            .map(|i| self.endpoint(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client)
    }

    /// Whether member `i` says it is etcd's raft leader now (`etcd_server_is_leader 1` in its
    /// `/metrics`). A dead or silent member is not.
    pub fn is_raft_leader(&self, i: usize) -> bool {
        self.members[i].proc.is_some()
            && http_get(self.members[i].client, "/metrics")
                .is_some_and(|m| m.lines().any(|l| l.trim() == "etcd_server_is_leader 1"))
    }

    /// The member that is etcd's raft leader, once exactly one live member says it is (up to
    /// `limit`).
    pub fn raft_leader(&self, limit: Duration) -> Option<usize> {
        let mut found = None;
        super::eventually(limit, || {
            let leaders: Vec<usize> = (0..self.members.len())
                .filter(|&i| self.is_raft_leader(i))
                .collect();
            found = (leaders.len() == 1).then(|| leaders[0]);
            found.is_some()
        });
        found
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        self.members[i].proc = None; // Proc's drop kills and reaps it
    }

    /// Member `i`'s log (its stderr).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let c = format!("http://127.0.0.1:{}", m.client);
        let p = format!("http://127.0.0.1:{}", m.peer);
        let child = Command::new("etcd")
            .args(["--name", &m.name, "--data-dir"])
            .arg(self.dir.path().join(&m.name))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args([
                "--listen-peer-urls",
                &p,
                "--initial-advertise-peer-urls",
                &p,
            ])
            .args(["--initial-cluster", &self.initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "factotum-cli-tests"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log_path(i)).unwrap())
            .spawn()
            .expect("etcd must be installed (apt-get install etcd-server; `make test` does it)");
        self.members[i].proc = Some(Proc(child));
    }

    fn wait_healthy(&mut self, i: usize) {
        let client = self.members[i].client;
        let healthy = super::eventually(Duration::from_secs(20), || {
            http_get(client, "/health").is_some_and(|b| b.contains("\"health\":\"true\""))
        });
        if !healthy {
            let log = self.log(i);
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            panic!(
                "etcd member {} did not become healthy within 20 s; its log ends:\n{}",
                self.endpoint(i),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}
