use super::*;
use serde_json::json;

fn r(secrets: &[&str]) -> Redactor {
    Redactor::new(secrets.iter().copied())
}

/// Feeds `pieces` (text, ends) of one stream and joins what comes out into lines.
fn stream(r: &Redactor, pieces: &[(&str, bool, bool)]) -> (Vec<String>, Vec<(String, bool)>) {
    let mut lr = LineRedactor::new();
    let mut out = vec![];
    for &(text, continued, ends) in pieces {
        lr.push(r, text, continued, ends, &mut out);
    }
    lr.finish(r, &mut out);
    let mut lines: Vec<String> = vec![];
    for (text, continued) in &out {
        match lines.last_mut() {
            Some(last) if *continued => last.push_str(text),
            _ => lines.push(text.clone()),
        }
    }
    (lines, out)
}

#[test]
fn secrets_are_replaced_and_short_ones_left_alone() {
    let r = r(&["s3cr3t-value", "abc", "pa\nssword"]);
    assert_eq!(r.secrets(), ["s3cr3t-value", "ssword"]);
    assert_eq!(
        r.redact("token=s3cr3t-value; again s3cr3t-value abc"),
        "token=[redacted]; again [redacted] abc"
    );
    assert_eq!(r.redact("my password"), "my pa[redacted]");
    assert!(matches!(r.redact("nothing here"), Cow::Borrowed(_)));
    assert!(Redactor::new(Vec::<String>::new()).is_empty());
}

#[test]
fn string_leaves_are_found_at_any_depth() {
    let env = json!({"a": "one1", "b": {"c": ["two2", 3, true, {"d": "three"}]}, "e": null});
    assert_eq!(string_leaves(&env), ["one1", "two2", "three"]);
}

#[test]
fn overlapping_secrets_are_replaced_together() {
    // Neither secret may show in part: the overlap becomes one marker.
    let r = r(&["abcdef", "defghi"]);
    assert_eq!(r.redact("xxabcdefghiyy"), "xx[redacted]yy");
    // One inside another: the longer wins.
    let r2 = super::Redactor::new(["secret", "secret-longer"]);
    assert_eq!(
        r2.redact("a secret-longer b secret"),
        "a [redacted] b [redacted]"
    );
    // A secret overlapping itself.
    let r3 = super::Redactor::new(["aaaa"]);
    assert_eq!(r3.redact("xaaaaaay"), "x[redacted]y");
    // Next to each other: two markers.
    assert_eq!(r2.redact("secretsecret"), "[redacted][redacted]");
}

#[test]
fn a_secret_cut_across_pieces_is_still_caught() {
    let r = r(&["s3cr3t-value"]);
    for cut in 1.."s3cr3t-value".len() {
        let (a, b) = "s3cr3t-value".split_at(cut);
        let first = format!("before {a}");
        let second = format!("{b} after");
        let (lines, out) = stream(&r, &[(&first, false, false), (&second, true, true)]);
        assert_eq!(lines, ["before [redacted] after"], "cut at {cut}");
        assert!(out
            .iter()
            .all(|(t, _)| !t.contains(a) || a.len() < 4 && !t.contains("s3cr3t")));
    }
    // Across three pieces.
    let (lines, _) = stream(
        &r,
        &[
            ("x s3c", false, false),
            ("r3t-", true, false),
            ("value y", true, true),
        ],
    );
    assert_eq!(lines, ["x [redacted] y"]);
}

#[test]
fn overlapping_secrets_across_pieces() {
    let r = r(&["abcdef", "defghi"]);
    let (lines, _) = stream(
        &r,
        &[
            ("--abcd", false, false),
            ("efgh", true, false),
            ("i--", true, true),
        ],
    );
    assert_eq!(lines, ["--[redacted]--"]);
}

#[test]
fn pieces_keep_their_lines_and_what_is_held_waits_for_the_end() {
    let r = r(&["s3cr3t-value"]);
    // Three lines, the second in two pieces; no line end known for the last: flushed at finish.
    let (lines, out) = stream(
        &r,
        &[
            ("one s3cr3t-value", false, true),
            ("two: a long piece that is cut s3cr3t", false, false),
            ("-value and more", true, true),
            ("three s3cr3t-va", false, false),
        ],
    );
    assert_eq!(
        lines,
        [
            "one [redacted]",
            "two: a long piece that is cut [redacted] and more",
            "three s3cr3t-va"
        ]
    );
    // A piece is passed on at once but for its last (longest secret - 1) bytes.
    assert_eq!(out[1], ("two: a long piece that is".to_string(), false));
    // A new line closes an open one the caller could not tell had ended.
    let (lines, _) = stream(
        &r,
        &[("held s3cr3t-value", false, false), ("next", false, true)],
    );
    assert_eq!(lines, ["held [redacted]", "next"]);
}

#[test]
fn empty_lines_and_nothing_to_redact_pass_through() {
    let none = Redactor::default();
    let (lines, out) = stream(
        &none,
        &[("", false, true), ("a", false, false), ("b", true, true)],
    );
    assert_eq!(lines, ["", "ab"]);
    assert_eq!(
        out,
        [("".into(), false), ("a".into(), false), ("b".into(), true)]
    );
    let r = r(&["s3cr3t-value"]);
    let (lines, _) = stream(
        &r,
        &[("", false, true), ("", false, false), ("x", true, true)],
    );
    assert_eq!(lines, ["", "x"]);
}

#[test]
fn utf8_is_never_cut() {
    // Multi-byte characters around and inside the secret; cut at every byte that is a boundary.
    let secret = "clé-secrète-ü";
    let r = Redactor::new([secret]);
    let line = format!("ää {secret} öö");
    for cut in (1..line.len()).filter(|&c| line.is_char_boundary(c)) {
        let (a, b) = line.split_at(cut);
        let (lines, out) = stream(&r, &[(a, false, false), (b, true, true)]);
        assert_eq!(lines, ["ää [redacted] öö"], "cut at {cut}");
        // Every piece is valid text on its own (String guarantees it) and none shows the secret.
        assert!(out.iter().all(|(t, _)| !t.contains(secret)));
    }
    // A held part that ends inside a multi-byte character of the text is impossible: the
    // hold-back boundary moves to a character boundary.
    let (lines, _) = stream(
        &r,
        &[("ü".repeat(20).as_str(), false, false), ("x", true, true)],
    );
    assert_eq!(lines, [format!("{}x", "ü".repeat(20))]);
}

#[test]
fn a_long_chain_of_overlaps_is_not_held_forever() {
    let r = r(&["aaaa"]);
    let long = "a".repeat(MAX_HELD * 2);
    let mut lr = LineRedactor::new();
    let mut out = vec![];
    lr.push(&r, &long, false, false, &mut out);
    assert_eq!(out, [(REDACTED.to_string(), false)]);
    assert!(lr.held.len() <= MAX_HELD);
}
