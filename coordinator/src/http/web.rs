//! What the web UI's handlers share: who calls (a bearer token or the session cookie) and the
//! CSRF rule, percent-coding, query strings and cookies, JSON answers and refusals (a gRPC
//! code's HTTP status), and the client API's messages as JSON.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use factotum_proto::jobs as pb;
use serde_json::{json, Value};
use tonic::Code;
use tonic_types::StatusExt;

use super::Port;

/// The cookie holding a UI session's token (HttpOnly), and the CSRF cookie the page echoes in
/// [`CSRF_HEADER`] on every POST.
pub const TOKEN_COOKIE: &str = "factotum_token";
pub const CSRF_COOKIE: &str = "factotum_csrf";
pub const CSRF_HEADER: &str = "x-factotum-csrf";

/// What the handlers know of the port they serve on (a request extension set by
/// [`super::serve`]; the default, for a router served otherwise: loopback, never stopping).
#[derive(Clone, Debug)]
pub struct Context {
    /// The coordinator's shutdown: streams end with it.
    pub stop: tokio_util::sync::CancellationToken,
    /// The HTTP port listens on loopback only.
    pub loopback: bool,
}

impl Default for Context {
    fn default() -> Context {
        Context {
            stop: tokio_util::sync::CancellationToken::new(),
            loopback: true,
        }
    }
}

pub type Ctx = Option<axum::Extension<Context>>;

/// The context of a request.
pub fn context(ctx: Ctx) -> Context {
    ctx.map(|c| c.0).unwrap_or_default()
}

/// Without `--tokens`, the client API serves anyone when its gRPC listener is loopback (or
/// with `--insecure`); an HTTP port reachable from elsewhere (with TLS) must not inherit that:
/// it serves the UI's API only with tokens.
pub fn exposed(port: &Port, ctx: &Context) -> Option<Response> {
    (!ctx.loopback && port.auth.is_none() && port.tls.is_some()).then(|| {
        let why = "this HTTP port is reachable beyond loopback: its API needs --tokens";
        error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", why)
    })
}

/// Who calls: a bearer token from `Authorization`, or the UI session's cookie.
pub struct Caller {
    pub token: Option<String>,
    pub by_cookie: bool,
}

impl Caller {
    pub fn of(headers: &HeaderMap) -> Caller {
        let bearer = (headers.get(header::AUTHORIZATION))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or(v.strip_prefix("bearer ")))
            .map(|t| t.trim().to_string());
        if bearer.is_some() {
            return Caller {
                token: bearer,
                by_cookie: false,
            };
        }
        let token = cookie(headers, TOKEN_COOKIE).filter(|t| !t.is_empty());
        Caller {
            by_cookie: token.is_some(),
            token,
        }
    }

    /// A request to the client API with this caller's credential.
    pub fn call<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let value = (self.token.as_ref()).and_then(|t| format!("Bearer {t}").parse().ok());
        if let Some(v) = value {
            request.metadata_mut().insert("authorization", v);
        }
        request
    }
}

/// A POST made without an `Authorization` header (a browser's: cookies go along by themselves)
/// must carry [`CSRF_HEADER`], equal to the CSRF cookie when it is there: a cross-site form can
/// set no header, and a cross-site script may not send one without a CORS preflight we refuse.
pub fn csrf_refusal(headers: &HeaderMap, caller: &Caller) -> Option<Response> {
    if caller.token.is_some() && !caller.by_cookie {
        return None;
    }
    let sent = (headers.get(CSRF_HEADER)).and_then(|v| v.to_str().ok());
    let ok = match (sent, cookie(headers, CSRF_COOKIE)) {
        (Some(s), Some(c)) => !c.is_empty() && s == c,
        (Some(s), None) => !caller.by_cookie && !s.is_empty(),
        (None, _) => false,
    };
    (!ok).then(|| {
        error(
            StatusCode::FORBIDDEN,
            "CSRF",
            "a POST from a browser needs the X-Factotum-CSRF header (the factotum_csrf cookie's value)",
        )
    })
}

/// A cookie's value (percent-decoded).
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    for value in headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=') {
                if k == name {
                    return Some(decode(v.trim_matches('"')));
                }
            }
        }
    }
    None
}

/// Percent-decoding (`+` kept as is); invalid escapes are kept literally, bytes that are not
/// UTF-8 become U+FFFD.
pub fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Everything but unreserved characters (RFC 3986) is percent-encoded.
const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes everything but unreserved characters.
pub fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, RESERVED).to_string()
}

/// A query string's parameters (`+` is a space).
pub fn query(uri: &Uri) -> BTreeMap<String, String> {
    query_pairs(uri.query().unwrap_or(""))
}

/// The parameters of a raw query string (`a=1&b=x%20y`), percent-decoded; `+` is a space.
pub fn query_pairs<M: FromIterator<(String, String)>>(q: &str) -> M {
    (q.split('&').filter(|p| !p.is_empty()))
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(&k.replace('+', " ")), decode(&v.replace('+', " ")))
        })
        .collect()
}

pub fn json_response(status: StatusCode, body: Value) -> Response {
    let headers = [
        (header::CONTENT_TYPE, "application/json"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    (status, headers, body.to_string()).into_response()
}

pub fn error(status: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    let message: String = message.into();
    json_response(status, json!({"error": message, "reason": reason}))
}

/// A refusal of the client API as JSON, with the HTTP status of its gRPC code.
pub fn refused(status: &tonic::Status) -> Response {
    let http = match status.code() {
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let reason = (status.get_error_details().error_info())
        .map(|i| i.reason.clone())
        .unwrap_or_else(|| format!("{:?}", status.code()).to_uppercase());
    error(http, &reason, status.message())
}

pub fn run_state(s: i32) -> &'static str {
    pb::RunState::try_from(s)
        .map(|s| s.as_str_name().trim_start_matches("RUN_STATE_"))
        .unwrap_or("UNSPECIFIED")
}

pub fn task_state(s: i32) -> &'static str {
    pb::TaskState::try_from(s)
        .map(|s| s.as_str_name().trim_start_matches("TASK_STATE_"))
        .unwrap_or("UNSPECIFIED")
}

pub fn time(t: &Option<prost_types::Timestamp>) -> Value {
    let t = t.as_ref().and_then(crate::wire::jobs::from_timestamp);
    t.map_or(Value::Null, |t| json!(t.to_rfc3339()))
}

pub fn secs(d: &Option<prost_types::Duration>) -> Value {
    d.as_ref().map_or(Value::Null, |d| {
        json!(d.seconds as f64 + f64::from(d.nanos) / 1e9)
    })
}

pub fn task_json(t: &pb::Task) -> Value {
    json!({
        "name": t.name, "state": task_state(t.state), "attempt": t.attempt,
        "agent": t.agent, "started": time(&t.started), "duration": secs(&t.duration),
        "return_code": t.return_code, "error_message": t.error_message,
        "dependencies": t.dependencies,
    })
}

pub fn run_json(r: &pb::Run) -> Value {
    json!({
        "run_id": r.run_id, "job_name": r.job_name, "job_reference": r.job_reference,
        "state": run_state(r.state), "start_time": time(&r.start_time),
        "duration": secs(&r.duration), "waiting_reason": r.waiting_reason, "tags": r.tags,
        "rerun_of": r.rerun_of, "cancel_reason": r.cancel_reason, "cancelled_by": r.cancelled_by,
        "task_count": r.task_count, "tasks_done": r.tasks_done,
        "tasks": r.tasks.iter().map(task_json).collect::<Vec<_>>(),
    })
}

/// The text of a body that is a stream of chunks.
pub fn text_stream(body: Body) -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    (StatusCode::OK, headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_coding() {
        assert_eq!(decode("%zz%4"), "%zz%4");
        assert_eq!(decode("a%2Fb%20%C3%A9"), "a/b é");
        assert_eq!(encode("a/b é"), "a%2Fb%20%C3%A9");
    }

    #[test]
    fn cookies_and_csrf() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "x=1; factotum_token=t%3Bk; factotum_csrf=abc"
                .parse()
                .unwrap(),
        );
        let caller = Caller::of(&h);
        assert_eq!(caller.token.as_deref(), Some("t;k"));
        assert!(csrf_refusal(&h, &caller).is_some());
        h.insert(CSRF_HEADER, "abd".parse().unwrap());
        assert!(csrf_refusal(&h, &caller).is_some());
        h.insert(CSRF_HEADER, "abc".parse().unwrap());
        assert!(csrf_refusal(&h, &caller).is_none());
        let mut bearer = HeaderMap::new();
        bearer.insert(header::AUTHORIZATION, "Bearer tok".parse().unwrap());
        assert!(csrf_refusal(&bearer, &Caller::of(&bearer)).is_none());
    }
}
