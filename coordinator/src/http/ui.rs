//! The web UI at `/ui/`: a page, a script and a style sheet written by hand and embedded in
//! the binary (no build step), over the JSON API of [`super::api`].
//!
//! With `--tokens`, `POST /ui/login` (a form or JSON `{"token": ...}`) checks the token with a
//! `ListRuns` call and sets it in an HttpOnly, SameSite=Strict cookie (Secure with TLS): an
//! `EventSource` cannot send headers. It also sets a readable CSRF cookie that the page sends
//! back in `X-Factotum-CSRF` on every POST ([`super::web::csrf_refusal`]). `POST /ui/logout`
//! clears both.

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use factotum_proto::jobs as pb;
use factotum_proto::jobs::jobs_server::Jobs;
use serde_json::{json, Value};

use super::api;
use super::web::{self, Caller, CSRF_COOKIE, TOKEN_COOKIE};
use super::Port;

const INDEX: &str = include_str!("ui/index.html");
const APP: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

/// A login body holds a token.
const MAX_LOGIN: usize = 8 * 1024;

/// Scripts, styles and connections from this origin only; never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The request extension [`super::serve`] adds for these routes.
pub fn context(
    listener: &tokio::net::TcpListener,
    stop: &tokio_util::sync::CancellationToken,
) -> axum::Extension<web::Context> {
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    axum::Extension(web::Context {
        stop: stop.clone(),
        loopback,
    })
}

/// The UI's routes and the JSON API's.
pub fn routes() -> Router<Port> {
    let ui = Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route(
            "/ui/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP) }),
        )
        .route(
            "/ui/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/session", get(session))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_LOGIN));
    ui.merge(api::routes())
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-cache"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    (StatusCode::OK, headers, body).into_response()
}

/// The token of a login body: JSON `{"token": ...}` or a form `token=...`.
fn login_token(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let json = (headers.get(header::CONTENT_TYPE))
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let token = if json {
        let v: Value = serde_json::from_slice(body).ok()?;
        v.get("token")?.as_str()?.to_string()
    } else {
        let text = std::str::from_utf8(body).ok()?;
        let pair = text.split('&').find_map(|p| p.strip_prefix("token="))?;
        web::decode(&pair.replace('+', " "))
    };
    Some(token.trim().to_string()).filter(|t| !t.is_empty())
}

fn cookie(
    name: &str,
    value: &str,
    http_only: bool,
    secure: bool,
    max_age: Option<u32>,
) -> HeaderValue {
    let mut c = format!("{name}={}; Path=/; SameSite=Strict", web::encode(value));
    if http_only {
        c.push_str("; HttpOnly");
    }
    if secure {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

async fn login(
    axum::extract::State(port): axum::extract::State<Port>,
    ctx: web::Ctx,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refusal) = web::exposed(&port, &web::context(ctx)) {
        return refusal;
    }
    let Some(token) = login_token(&headers, &body) else {
        return web::error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "the body needs a token (a form field or JSON \"token\")",
        );
    };
    let caller = Caller {
        token: Some(token.clone()),
        by_cookie: false,
    };
    let probe = pb::ListRunsRequest {
        page_size: 1,
        ..Default::default()
    };
    if let Err(status) = port.jobs.list_runs(caller.call(probe)).await {
        return web::refused(&status);
    }
    let secure = port.tls.is_some();
    let csrf = hex(&rand::random::<[u8; 16]>());
    let mut response = web::json_response(StatusCode::OK, json!({"ok": true, "csrf": csrf}));
    let h = response.headers_mut();
    h.append(
        header::SET_COOKIE,
        cookie(TOKEN_COOKIE, &token, true, secure, None),
    );
    h.append(
        header::SET_COOKIE,
        cookie(CSRF_COOKIE, &csrf, false, secure, None),
    );
    response
}

async fn logout(axum::extract::State(port): axum::extract::State<Port>) -> Response {
    let secure = port.tls.is_some();
    let mut response = web::json_response(StatusCode::OK, json!({"ok": true}));
    let h = response.headers_mut();
    h.append(
        header::SET_COOKIE,
        cookie(TOKEN_COOKIE, "", true, secure, Some(0)),
    );
    h.append(
        header::SET_COOKIE,
        cookie(CSRF_COOKIE, "", false, secure, Some(0)),
    );
    response
}

/// Whether the port needs credentials, and whether this browser has a session.
async fn session(
    axum::extract::State(port): axum::extract::State<Port>,
    headers: HeaderMap,
) -> Response {
    let caller = Caller::of(&headers);
    web::json_response(
        StatusCode::OK,
        json!({"tokens": port.auth.is_some(), "session": caller.by_cookie}),
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_body_is_a_form_or_json() {
        let mut h = HeaderMap::new();
        assert_eq!(login_token(&h, b"token=a%2Bb+c").as_deref(), Some("a+b c"));
        assert_eq!(login_token(&h, b"other=1"), None);
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert_eq!(login_token(&h, br#"{"token":" t "}"#).as_deref(), Some("t"));
        assert_eq!(login_token(&h, b"{"), None);
    }

    #[test]
    fn cookies_are_strict_and_http_only_where_asked() {
        let c = cookie("n", "a;b", true, true, Some(0));
        assert_eq!(
            c,
            "n=a%3Bb; Path=/; SameSite=Strict; HttpOnly; Secure; Max-Age=0"
        );
    }
}
