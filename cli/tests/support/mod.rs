//! Shared pieces of the integration tests: the real binary, factfiles in temp dirs, and a real
//! HTTP webhook receiver.
#![allow(dead_code)]

pub mod fleet;
pub mod policies;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

pub const SCHEMA: &str = "iglu:com.snowplowanalytics.factotum/factfile/jsonschema/1-0-0";

pub fn factotum() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_factotum"));
    c.env_remove("RUST_LOG").env("NO_COLOR", "1");
    c
}

/// Starts `cmd` with no stdin and its stdout and stderr piped to the test.
pub fn spawn_piped(cmd: &mut Command) -> std::process::Child {
    use std::process::Stdio;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts")
}

/// Runs `factotum` to its end; a run that hangs for two minutes is killed and fails the test.
pub fn run(args: &[&str]) -> Output {
    use std::process::Stdio;
    let mut child = factotum()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the factotum binary runs");
    let pipe = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = vec![];
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = pipe(Box::new(child.stdout.take().unwrap()));
    let err = pipe(Box::new(child.stderr.take().unwrap()));
    let mut status = None;
    if !eventually(Duration::from_secs(120), || {
        status = child.try_wait().unwrap();
        status.is_some()
    }) {
        let _ = child.kill();
        panic!("factotum {args:?} did not finish within 2 minutes");
    }
    let status = status.expect("finished");
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `(name, command, arguments, dependsOn)` with continueJob [0] and terminateJobWithSuccess [3].
pub fn task(name: &str, command: &str, args: &[&str], deps: &[&str]) -> Value {
    json!({"name": name, "executor": "shell", "command": command, "arguments": args, "dependsOn": deps,
           "onResult": {"terminateJobWithSuccess": [3], "continueJob": [0]}})
}

pub fn factfile(name: &str, tasks: Vec<Value>) -> String {
    serde_json::to_string_pretty(&json!({"schema": SCHEMA, "data": {"name": name, "tasks": tasks}}))
        .unwrap()
}

/// A temp dir holding files for one test.
pub struct Dir(pub tempfile::TempDir);

impl Dir {
    pub fn new() -> Dir {
        Dir(tempfile::tempdir().expect("temp dir"))
    }
    pub fn path(&self) -> &Path {
        self.0.path()
    }
    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.0.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }
    pub fn file(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

/// The repository root and the shared reference data beside it (`../shared`).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn shared(rel: &str) -> String {
    let p = repo().parent().unwrap().join("shared").join(rel);
    assert!(
        p.exists(),
        "the shared reference data must be beside the repo: {} is missing",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request target: path and query.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("payload is JSON")
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// A query parameter of the request target.
    pub fn query(&self, name: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A status and extra headers (a 2xx records the request as received).
    Status(u16, Vec<(String, String)>),
    /// Never answer (the connection stays open).
    Hang,
}

/// Decides each answer from the request's number (1-based, all requests) and the request.
pub type Responder = Arc<dyn Fn(usize, &Received) -> Answer + Send + Sync>;

/// A real HTTP server on 127.0.0.1:0 that records POSTs. The first `fail_first` requests get a
/// 500, the rest a 200 (or what a [`Responder`] says).
pub struct Receiver {
    pub url: String,
    got: Arc<Mutex<Vec<Received>>>,
    all: Arc<Mutex<Vec<Received>>>,
    attempts: Arc<Mutex<usize>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        Self::failing_first(0)
    }

    pub fn failing_first(fail_first: usize) -> Receiver {
        Self::answering(Arc::new(move |n, _| {
            Answer::Status(if n <= fail_first { 500 } else { 200 }, vec![])
        }))
    }

    /// A receiver whose answers `respond` decides; its URL's path is `/hook`.
    pub fn answering(respond: Responder) -> Receiver {
        Self::at_path("/hook", respond)
    }

    /// The same, listening on `path` (e.g. Snowplow's `/com.snowplowanalytics.iglu/v1`).
    pub fn at_path(path: &str, respond: Responder) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}{path}", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(vec![]));
        let all = Arc::new(Mutex::new(vec![]));
        let attempts = Arc::new(Mutex::new(0));
        let (g, al, a) = (got.clone(), all.clone(), attempts.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (g, al, a, r) = (g.clone(), al.clone(), a.clone(), respond.clone());
                std::thread::spawn(move || serve(conn, g, al, a, r));
            }
        });
        Receiver {
            url,
            got,
            all,
            attempts,
        }
    }

    /// The requests answered with a 2xx, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Every request, whatever its answer.
    pub fn requests(&self) -> Vec<Received> {
        self.all.lock().unwrap().clone()
    }

    pub fn attempts(&self) -> usize {
        *self.attempts.lock().unwrap()
    }

    /// Payload bodies parsed, in arrival order.
    pub fn payloads(&self) -> Vec<Value> {
        self.received().iter().map(Received::json).collect()
    }
}

fn serve(
    conn: TcpStream,
    got: Arc<Mutex<Vec<Received>>>,
    all: Arc<Mutex<Vec<Received>>>,
    attempts: Arc<Mutex<usize>>,
    respond: Responder,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let target = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        let mut headers = vec![];
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let n = {
            let mut a = attempts.lock().unwrap();
            *a += 1;
            *a
        };
        let request = Received {
            target,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        all.lock().unwrap().push(request.clone());
        let (status, extra) = match respond(n, &request) {
            Answer::Status(status, extra) => (status, extra),
            Answer::Hang => {
                std::thread::sleep(Duration::from_secs(3600));
                return;
            }
        };
        if (200..300).contains(&status) {
            got.lock().unwrap().push(request);
        }
        let extra: String = extra.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
        let _ = conn.write_all(
            format!("HTTP/1.1 {status} X\r\n{extra}Content-Length: 0\r\n\r\n").as_bytes(),
        );
    }
}

/// Waits (up to 10 s) for a task to write its pid, newline-terminated, into `file`.
pub fn read_pid(file: &Path) -> i32 {
    let written = eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(file).is_ok_and(|s| s.ends_with('\n'))
    });
    assert!(written, "no pid in {}", file.display());
    std::fs::read_to_string(file)
        .unwrap()
        .trim()
        .parse()
        .expect("a pid")
}

/// Whether process `pid` is gone (a zombie counts as gone).
pub fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// Polls `f` until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let step = Duration::from_millis(20);
    let tries = (limit.as_millis() / step.as_millis()).max(1);
    for _ in 0..tries {
        if f() {
            return true;
        }
        std::thread::sleep(step);
    }
    f()
}

/// The transitions of a payload list as readable strings.
pub fn transitions(payloads: &[Value]) -> Vec<String> {
    payloads
        .iter()
        .map(|p| {
            let d = &p["data"];
            if let Some(j) = d.get("jobTransition") {
                format!(
                    "job {}->{}",
                    j["previousState"].as_str().unwrap_or("null"),
                    j["currentState"].as_str().unwrap()
                )
            } else {
                d["taskTransitions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| {
                        format!(
                            "{} {}->{}",
                            t["taskName"].as_str().unwrap(),
                            t["previousState"].as_str().unwrap(),
                            t["currentState"].as_str().unwrap()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" | ")
            }
        })
        .collect()
}

/// A live process's peak resident memory (KiB), from `/proc/<pid>/status`.
pub fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
