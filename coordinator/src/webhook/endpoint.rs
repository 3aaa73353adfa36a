//! Webhook endpoints as configured: each URL's secrets and filter, and the request URL an event
//! is POSTed to (Snowplow's Iglu adapter gets `eid`, `ttm` and `p` added).

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use super::sign::{Secret, SecretError};

/// Which events an endpoint gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    /// Every job and task transition (Factotum's behaviour).
    #[default]
    All,
    /// Job transitions only (`job_update`).
    Job,
    /// Only transitions into a terminal state: a job that ended, or tasks that ended.
    Terminal,
}

/// What an event is, for filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Job { terminal: bool },
    Tasks { terminal: bool },
}

impl Filter {
    pub fn wants(self, kind: EventKind) -> bool {
        match (self, kind) {
            (Filter::All, _) => true,
            (Filter::Job, EventKind::Job { .. }) => true,
            (Filter::Job, EventKind::Tasks { .. }) => false,
            (Filter::Terminal, EventKind::Job { terminal } | EventKind::Tasks { terminal }) => {
                terminal
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("a [[webhook]] entry is not valid: {0}")]
    Table(String),
    #[error("{0}")]
    Secret(#[from] SecretError),
}

/// One `--webhook` value: a URL, or — from a config file's `[[webhook]]` table, which reaches
/// the flag as JSON — `{"url": …, "secrets": ["whsec_…"], "filter": "all|job|terminal"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub url: String,
    /// Its own secrets (instead of the `--webhook-secret` ones); empty: those.
    pub secrets: Vec<Secret>,
    pub filter: Filter,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    url: String,
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    filter: Filter,
}

impl std::str::FromStr for EndpointSpec {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<EndpointSpec, EndpointError> {
        if !s.trim_start().starts_with('{') {
            return Ok(EndpointSpec {
                url: s.to_string(),
                secrets: vec![],
                filter: Filter::All,
            });
        }
        let t: Table = serde_json::from_str(s).map_err(|e| EndpointError::Table(e.to_string()))?;
        let secrets = (t.secrets.iter())
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?;
        Ok(EndpointSpec {
            url: t.url,
            secrets,
            filter: t.filter,
        })
    }
}

/// One `--webhook` flag's value: comma-separated URLs (as in `FACTOTUM_WEBHOOK`), or one
/// `[[webhook]]` table as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointList(pub Vec<EndpointSpec>);

impl std::str::FromStr for EndpointList {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<EndpointList, EndpointError> {
        if s.trim_start().starts_with('{') {
            return Ok(EndpointList(vec![s.parse()?]));
        }
        (s.split(',').map(str::trim).filter(|u| !u.is_empty()))
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(EndpointList)
    }
}

/// Every endpoint's settings: the secrets for every URL, and what `[[webhook]]` tables say
/// about some. A URL nobody configured (a run's own) is signed with the shared secrets and
/// gets every event.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    shared: Vec<Secret>,
    by_url: HashMap<String, EndpointSpec>,
}

impl Endpoints {
    pub fn new(shared: Vec<Secret>, specs: &[EndpointSpec]) -> Arc<Endpoints> {
        let by_url = (specs.iter()).map(|s| (s.url.clone(), s.clone())).collect();
        Arc::new(Endpoints { shared, by_url })
    }

    pub fn secrets(&self, url: &str) -> &[Secret] {
        match self.by_url.get(url) {
            Some(e) if !e.secrets.is_empty() => &e.secrets,
            _ => &self.shared,
        }
    }

    pub fn filter(&self, url: &str) -> Filter {
        self.by_url.get(url).map(|e| e.filter).unwrap_or_default()
    }

    /// The URLs configured here (the coordinator's own endpoints).
    pub fn configured(&self) -> impl Iterator<Item = &str> {
        self.by_url.keys().map(String::as_str)
    }
}

/// The path Snowplow's Iglu webhook adapter listens on.
const IGLU_PATH: &str = "/com.snowplowanalytics.iglu/v1";

/// Where an event is POSTed: the URL itself, or for Snowplow's Iglu adapter the URL with
/// `eid` (the event id), `ttm` (the transition time, ms) and `p=srv` added to the user's own
/// query parameters (a `p` the user gave is kept instead).
pub fn target(url: &str, event_id: &str, ttm_ms: i64) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return url.to_string();
    };
    if !parsed.path().ends_with(IGLU_PATH) {
        return url.to_string();
    }
    let has_p = parsed.query_pairs().any(|(k, _)| k == "p");
    {
        let mut q = parsed.query_pairs_mut();
        q.append_pair("eid", event_id);
        q.append_pair("ttm", &ttm_ms.to_string());
        if !has_p {
            q.append_pair("p", "srv");
        }
    }
    parsed.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iglu_urls_get_eid_ttm_and_p_and_keep_their_own() {
        let id = "5f0b2a53-1e1e-5c4e-9b9a-000000000000";
        assert_eq!(
            target(
                "https://c.example.com/com.snowplowanalytics.iglu/v1?aid=nightly",
                id,
                1700000000123
            ),
            format!("https://c.example.com/com.snowplowanalytics.iglu/v1?aid=nightly&eid={id}&ttm=1700000000123&p=srv")
        );
        assert_eq!(
            target("http://c/com.snowplowanalytics.iglu/v1?p=app", id, 5),
            format!("http://c/com.snowplowanalytics.iglu/v1?p=app&eid={id}&ttm=5")
        );
        assert_eq!(target("http://c/hook?x=1", id, 5), "http://c/hook?x=1");
    }

    #[test]
    fn filters_choose_events() {
        use EventKind::*;
        let all = [
            Job { terminal: false },
            Job { terminal: true },
            Tasks { terminal: false },
            Tasks { terminal: true },
        ];
        let picked = |f: Filter| all.iter().map(|k| f.wants(*k)).collect::<Vec<_>>();
        assert_eq!(picked(Filter::All), [true, true, true, true]);
        assert_eq!(picked(Filter::Job), [true, true, false, false]);
        assert_eq!(picked(Filter::Terminal), [false, true, false, true]);
    }

    #[test]
    fn a_webhook_value_is_a_url_or_a_table() {
        let plain: EndpointSpec = "http://x/hook".parse().unwrap();
        assert_eq!(plain.filter, Filter::All);
        let t: EndpointSpec = r#"{"url":"http://x/a","secrets":["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],"filter":"terminal"}"#
            .parse()
            .unwrap();
        assert_eq!(
            (t.url.as_str(), t.filter, t.secrets.len()),
            ("http://x/a", Filter::Terminal, 1)
        );
        let err = r#"{"url":"http://x/a","filter":"some"}"#
            .parse::<EndpointSpec>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant"), "{err}");
        let err =
            r#"{"url":"http://x/a","secret":"x"}"#.parse::<EndpointSpec>().unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
        let list: EndpointList = "http://a, http://b".parse().unwrap();
        assert_eq!(list.0.len(), 2);
        assert_eq!(list.0[1].url, "http://b");
        let shared: Secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
        let e = Endpoints::new(vec![shared.clone()], &[t]);
        assert_eq!(e.secrets("http://other"), &[shared]);
        assert_eq!(e.filter("http://x/a"), Filter::Terminal);
        assert_eq!(e.filter("http://other"), Filter::All);
    }
}
