//! The coordinator's HTTP port from the tests: a coordinator whose HTTP address is known (its
//! second stdout line), a small HTTP/1.1 client, and a WebDriver session on headless Chromium
//! (Debian's `chromium` and `chromium-driver`: a test fails loudly when they are missing).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::fleet::{sibling, Proc};

/// A coordinator started with `--http-listen 127.0.0.1:0`, its gRPC and HTTP addresses known.
pub struct WebCoordinator {
    pub proc: Proc,
    /// The gRPC address (`http://host:port`), for the CLI and agents.
    pub url: String,
    /// The HTTP port (`http://host:port`).
    pub http: String,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl WebCoordinator {
    pub fn start(extra: &[&str]) -> WebCoordinator {
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
        let mut line = |prefix: &str| {
            let mut l = String::new();
            out.read_line(&mut l).unwrap();
            let addr = l.trim().strip_prefix(prefix);
            addr.unwrap_or_else(|| panic!("expected '{prefix}<addr>', got {l:?}"))
                .to_string()
        };
        let grpc = line("listening on ");
        let http = line("http listening on ");
        WebCoordinator {
            proc: Proc(child),
            url: format!("http://{grpc}"),
            http: format!("http://{http}"),
            log,
            _dir: dir,
        }
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        (self.headers.iter())
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        (self.headers.iter())
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Opens `method url` with `headers` and `body` and returns the stream after the request.
pub fn open(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> TcpStream {
    open_as("HTTP/1.1", method, url, headers, body)
}

/// A `GET` as HTTP/1.0, so that a streamed answer comes unchunked, to its end.
pub fn stream(url: &str, headers: &[(&str, &str)]) -> BufReader<TcpStream> {
    BufReader::new(open_as("HTTP/1.0", "GET", url, headers, ""))
}

/// The next server-sent event on `r` (`id`, `event`, `data` as JSON), comments and retry
/// hints skipped; None at the end of the stream.
pub fn next_event(r: &mut impl BufRead) -> Option<(u64, String, Value)> {
    let (mut id, mut name, mut data) = (None, String::new(), String::new());
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            if !name.is_empty() {
                let data = serde_json::from_str(&data).expect("JSON data");
                return Some((id.expect("an id"), name, data));
            }
            continue;
        }
        if let Some(v) = line.strip_prefix("id: ") {
            id = v.parse().ok();
        } else if let Some(v) = line.strip_prefix("event: ") {
            name = v.to_string();
        } else if let Some(v) = line.strip_prefix("data: ") {
            data.push_str(v);
        }
    }
}

fn open_as(
    version: &str,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> TcpStream {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut s = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect {host}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} {version}\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    s
}

/// The status line and headers of an answer on `r`.
pub fn head(r: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).and_then(|s| s.parse().ok());
    let status = status.unwrap_or_else(|| panic!("no status line: {line:?}"));
    let mut headers = vec![];
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        let l = l.trim_end();
        if l.is_empty() {
            return (status, headers);
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
}

/// One request to its end.
pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut r = BufReader::new(open(method, url, headers, body));
    let (status, headers) = head(&mut r);
    let chunked = (headers.iter())
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut bytes = vec![];
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            bytes.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = (headers.iter())
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        bytes.resize(n, 0);
        r.read_exact(&mut bytes).unwrap();
    } else {
        r.read_to_end(&mut bytes).unwrap();
    }
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

pub fn get(url: &str) -> Answer {
    request("GET", url, &[], "")
}

/// Waits for `f` to give a value, polling every 100 ms; panics with `what` after `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A headless Chromium driven by `chromedriver` over the WebDriver protocol.
pub struct Browser {
    base: String,
    _driver: Proc,
}

fn need(bin: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(bin))
            .find(|p| p.exists())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{bin}` is missing: the UI tests need headless Chromium \
             (apt-get install -y chromium chromium-driver; scripts/install-deps.sh does it)"
        )
    })
}

impl Browser {
    pub fn start() -> Browser {
        let chromium = need("chromium");
        let driver = need("chromedriver");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Proc(child);
        let base = format!("http://127.0.0.1:{port}");
        wait_for(Duration::from_secs(20), "chromedriver to listen", || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1000"]
            }
        }}});
        let a = request("POST", &format!("{base}/session"), &[], &caps.to_string());
        let v = a.json();
        let id = v["value"]["sessionId"].as_str();
        let id = id.unwrap_or_else(|| panic!("no WebDriver session: {}", a.body));
        Browser {
            base: format!("{base}/session/{id}"),
            _driver: driver,
        }
    }

    fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let body = if method == "GET" {
            String::new()
        } else {
            body.to_string()
        };
        let headers = [("Content-Type", "application/json")];
        let a = request(method, &format!("{}{path}", self.base), &headers, &body);
        let v = a.json();
        assert!(a.status < 400, "WebDriver {method} {path}: {}", a.body);
        v["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url }));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub fn js(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
    }

    /// Runs an async `script`: it ends by calling `arguments[arguments.length - 1](value)`.
    pub fn js_async(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/async",
            json!({"script": script, "args": args}),
        )
    }

    /// The element `css` selects, once there is one.
    pub fn find(&self, css: &str) -> String {
        wait_for(Duration::from_secs(20), css, || {
            let body = json!({"using": "css selector", "value": css});
            let headers = [("Content-Type", "application/json")];
            let a = request(
                "POST",
                &format!("{}/element", self.base),
                &headers,
                &body.to_string(),
            );
            let v = a.json();
            (a.status == 200).then(|| {
                let el = v["value"].as_object().unwrap();
                el.values().next().unwrap().as_str().unwrap().to_string()
            })
        })
    }

    pub fn click(&self, css: &str) {
        let el = self.find(css);
        self.cmd("POST", &format!("/element/{el}/click"), json!({}));
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css);
        self.cmd("POST", &format!("/element/{el}/clear"), json!({}));
        self.cmd(
            "POST",
            &format!("/element/{el}/value"),
            json!({ "text": text }),
        );
    }

    /// `css`'s text content (empty when absent).
    pub fn text(&self, css: &str) -> String {
        let script =
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';";
        self.js(script, json!([css]))
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Waits until `css`'s text satisfies `ok`; returns it.
    pub fn wait_text(&self, css: &str, limit: Duration, ok: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + limit;
        loop {
            let last = self.text(css);
            if ok(&last) {
                return last;
            }
            assert!(
                Instant::now() < end,
                "{css} never matched; last text: {last:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a PNG screenshot to `target/ui-screenshots/<name>.png`; returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        use base64_png::decode;
        let png = self.cmd("GET", "/screenshot", Value::Null);
        let bytes = decode(png.as_str().expect("a screenshot"));
        let dir = screenshots();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = request("DELETE", &self.base, &[], "");
    }
}

/// Where screenshots go: `<target dir>/ui-screenshots`.
pub fn screenshots() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_factotum"));
    // <target>/debug/factotum
    exe.parent()
        .and_then(|p| p.parent())
        .unwrap()
        .join("ui-screenshots")
}

/// Standard base64 (what WebDriver's screenshots are), without a dependency.
mod base64_png {
    pub fn decode(s: &str) -> Vec<u8> {
        let value = |c: u8| match c {
            b'A'..=b'Z' => Some(c - b'A'),
            b'a'..=b'z' => Some(c - b'a' + 26),
            b'0'..=b'9' => Some(c - b'0' + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        };
        let mut out = Vec::with_capacity(s.len() * 3 / 4);
        let (mut acc, mut bits) = (0u32, 0);
        for v in s.bytes().filter_map(value) {
            acc = (acc << 6) | u32::from(v);
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        out
    }
}
