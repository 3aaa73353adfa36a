//! The `Jobs` service's own limits and credentials, without an engine.

use super::*;
use tokio::sync::watch;

/// The API of a follower that knows no leader, one submission at a time; `open`: served
/// without credentials.
fn follower(open: bool) -> JobsApi {
    let role = Routing {
        engine: watch::channel(None).1,
        leader: watch::channel(None).1,
    };
    let limits = factotum_common::template::Limits {
        field: 1 << 20,
        total: 1 << 26,
    };
    let security = crate::api::Security {
        open,
        ..Default::default()
    };
    let limits = crate::api::ServeLimits {
        render: limits,
        max_message: 16 << 20,
        max_pending_submits: 1,
        max_watches: 1,
        input: InputLimits::default(),
        idle_timeout: std::time::Duration::from_secs(60),
    };
    JobsApi::new(role, &limits, &security)
}

#[tokio::test]
async fn a_submission_over_max_pending_submits_is_refused_at_once() {
    let api = follower(true);
    let held = api.submit_permit().unwrap();
    let refused = api
        .submit_run(Request::new(pb::SubmitRunRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        refused.message(),
        "too many submissions in progress (--max-pending-submits 1); retry shortly"
    );
    let refused = api
        .rerun_run(Request::new(pb::RerunRunRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    drop(held);
    // The permit is back: the next call gets past the limit (to the follower's answer).
    let next = api
        .rerun_run(Request::new(pb::RerunRunRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(next.code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn a_watch_past_max_watches_is_refused_until_one_is_dropped() {
    let api = follower(true);
    let held = api.watch_permit().unwrap();
    let watch = || pb::WatchRunRequest {
        run_id: "r".into(),
        resume: false,
    };
    let refused = api.watch_run(Request::new(watch())).await.err().unwrap();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(
        refused.message(),
        "too many open watches (--max-watches 1); retry later"
    );
    // A stream holds its permit until it is dropped.
    let stream = holding(Box::pin(tokio_stream::empty()), held);
    assert!(api.watch_permit().is_err());
    drop(stream);
    let next = api.watch_run(Request::new(watch())).await.err().unwrap();
    assert_eq!(
        next.code(),
        Code::Unavailable,
        "past the limit, to the follower's answer"
    );
}

#[tokio::test]
async fn a_port_that_is_not_open_refuses_client_calls_without_credentials() {
    let api = follower(false);
    let refused = api
        .list_agents(Request::new(pb::ListAgentsRequest {}))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(refused.message().contains("no --tokens configured"));
}
