//! `--tag "key,value"` parsing, with Factotum's rules.

use std::collections::BTreeMap;

/// Key = text before the first comma, trimmed; value = the rest with every comma removed, trimmed.
/// Returns `None` for an empty key (Factotum ignores those).
pub fn parse_tag(raw: &str) -> Option<(String, String)> {
    let (key, value) = match raw.split_once(',') {
        Some((k, v)) => (k, v),
        None => (raw, ""),
    };
    let key = key.trim();
    if key.is_empty() {
        return None;
    }
    Some((key.to_string(), value.replace(',', "").trim().to_string()))
}

/// Parses every `--tag`; the last value for a key wins.
pub fn parse_tags<'a>(raw: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, String> {
    raw.into_iter().filter_map(parse_tag).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factotum_tag_rules() {
        assert_eq!(
            parse_tag("the rain,first,, wow,,"),
            Some(("the rain".into(), "first wow".into()))
        );
        assert_eq!(
            parse_tag(" env , prod "),
            Some(("env".into(), "prod".into()))
        );
        assert_eq!(parse_tag("solo"), Some(("solo".into(), "".into())));
        assert_eq!(parse_tag(" ,value"), None);
        assert_eq!(parse_tag(""), None);
    }

    #[test]
    fn last_tag_wins() {
        let tags = parse_tags(["env,dev", "client,acme", "env,prod", ",x"]);
        assert_eq!(tags.len(), 2);
        assert_eq!(tags["env"], "prod");
    }
}
