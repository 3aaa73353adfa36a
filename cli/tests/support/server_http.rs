//! A coordinator whose HTTP address is known (its second stdout line, `http listening on
//! <addr>`), and a small HTTP/1.1 client for it (Factotum Server's API tests).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::fleet::{sibling, Proc};

pub struct HttpCoordinator {
    pub proc: Proc,
    /// The gRPC URL (`http://addr`).
    pub url: String,
    /// The HTTP port's address (`host:port`).
    pub http: String,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl HttpCoordinator {
    /// `factotum-coordinator --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 <extra>`.
    pub fn start(extra: &[&str]) -> HttpCoordinator {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("coordinator.log");
        let mut child = Command::new(sibling("factotum-coordinator"))
            .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the coordinator starts");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (mut first, mut second) = (String::new(), String::new());
        out.read_line(&mut first).unwrap();
        out.read_line(&mut second).unwrap();
        let grpc = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("{first:?}"));
        let http = (second.trim().strip_prefix("http listening on "))
            .unwrap_or_else(|| panic!("{second:?}"));
        HttpCoordinator {
            url: format!("http://{grpc}"),
            http: http.to_string(),
            proc: Proc(child),
            log,
            _dir: dir,
        }
    }

    pub fn get(&self, path: &str) -> Answer {
        request(&self.http, "GET", path, None, None)
    }

    pub fn post(&self, path: &str, body: &str) -> Answer {
        request(&self.http, "POST", path, None, Some(body.as_bytes()))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether this coordinator leads (it logs `leading`).
    pub fn leads(&self) -> bool {
        self.log_text().contains(" leading")
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }

    pub fn message(&self) -> String {
        self.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// One request (`Connection: close`); a bearer token if given.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or_default();
    if method == "POST" {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before reading all of a large body.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Answer {
        status,
        content_type,
        body: body.to_string(),
    }
}
