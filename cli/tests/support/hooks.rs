//! What the webhook tests share: the sample run, dedup by `webhook-id`, sequence numbers, and
//! signatures checked by Python's `hmac` (an implementation that is not ours).
#![allow(dead_code)]

use serde_json::{json, Value};

use super::*;

/// A Standard Webhooks test secret.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub fn echo() -> String {
    repo()
        .join("samples/echo.factfile")
        .to_string_lossy()
        .into_owned()
}

/// Events after dropping repeats of a `webhook-id`, in arrival order.
pub fn deduplicated(rs: &[Received]) -> Vec<Received> {
    let mut seen = HashSet::new();
    (rs.iter())
        .filter(|r| seen.insert(r.header("webhook-id").unwrap().to_string()))
        .cloned()
        .collect()
}

pub fn sequences(rs: &[Received]) -> Vec<u64> {
    (rs.iter())
        .map(|r| r.header("factotum-sequence").unwrap().parse().unwrap())
        .collect()
}

/// Checks every request's signature with Python's `hmac` (not our code).
pub fn verify_with_python(requests: &[Received], secret: &str) {
    let items: Vec<Value> = requests
        .iter()
        .map(|r| {
            json!({
                "id": r.header("webhook-id"),
                "ts": r.header("webhook-timestamp"),
                "sig": r.header("webhook-signature"),
                "body": r.body,
            })
        })
        .collect();
    let d = Dir::new();
    let file = d.write("signed.json", &Value::Array(items).to_string());
    let script = r#"
import base64, hashlib, hmac, json, sys, time
key = base64.b64decode(sys.argv[2].removeprefix("whsec_"))
for m in json.load(open(sys.argv[1])):
    signed = f"{m['id']}.{m['ts']}.{m['body']}".encode()
    want = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert want in m["sig"].split(" "), (want, m["sig"])
    assert abs(time.time() - int(m["ts"])) < 300
print("ok", end="")
"#;
    let o = std::process::Command::new("python3")
        .args(["-c", script, &file, secret])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "ok",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
