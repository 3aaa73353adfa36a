//! `ListRuns` requests: the query they ask for and the page tokens that go with them.

use chrono::{DateTime, TimeZone, Utc};
use factotum_proto::jobs as pb;
use tonic::Status;

use super::errors::{Reason, Refusal};
use crate::model::RunQuery;
use crate::wire::jobs as wire;

/// Runs on a page when the request does not say.
pub const DEFAULT_PAGE: usize = 50;
/// Runs on a page, at most.
pub const MAX_PAGE: usize = 1000;

/// A page token: where the next page starts (the last run shown: its start and id).
pub fn page_token(after: &(DateTime<Utc>, String)) -> String {
    let nanos = after.0.timestamp_nanos_opt().unwrap_or(i64::MAX);
    format!("{nanos}:{}", after.1)
}

pub fn parse_page_token(token: &str) -> Result<Option<(DateTime<Utc>, String)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        Refusal::bad(
            Reason::InvalidArgument,
            "page_token",
            "page_token is not one a ListRuns answer gave",
        )
        .status()
    };
    let (nanos, id) = token.split_once(':').ok_or_else(bad)?;
    let nanos: i64 = nanos.parse().map_err(|_| bad())?;
    Ok(Some((Utc.timestamp_nanos(nanos), id.to_string())))
}

/// What a `ListRuns` request asks for.
pub fn run_query(r: pb::ListRunsRequest) -> Result<RunQuery, Status> {
    let limit = match r.page_size as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    };
    let mut states = Vec::new();
    for s in r.states {
        match pb::RunState::try_from(s) {
            Ok(pb::RunState::Unspecified) | Err(_) => {
                return Err(Refusal::bad(
                    Reason::InvalidArgument,
                    "states",
                    format!("{s} is not a run state"),
                )
                .status())
            }
            Ok(_) => states.push(wire::run_state_name(s)),
        }
    }
    let time = |t: Option<prost_types::Timestamp>, field: &'static str| match t {
        None => Ok(None),
        Some(t) => wire::from_timestamp(&t).map(Some).ok_or_else(|| {
            Refusal::bad(
                Reason::InvalidArgument,
                field,
                format!("{field} is not a time"),
            )
            .status()
        }),
    };
    Ok(RunQuery {
        limit,
        after: parse_page_token(&r.page_token)?,
        job_name: Some(r.job_name).filter(|j| !j.is_empty()),
        states,
        tags: r.tags.into_iter().collect(),
        started_after: time(r.started_after, "started_after")?,
        started_before: time(r.started_before, "started_before")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn page_tokens_go_there_and_back_and_junk_is_refused() {
        let after = (
            Utc.timestamp_nanos(1_764_540_000_123_456_789),
            "ab12".to_string(),
        );
        assert_eq!(parse_page_token(&page_token(&after)).unwrap(), Some(after));
        assert_eq!(parse_page_token("").unwrap(), None);
        assert_eq!(
            parse_page_token("junk").unwrap_err().code(),
            Code::InvalidArgument
        );
    }
}
