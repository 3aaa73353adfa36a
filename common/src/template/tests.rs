//! The template engine's tests: rendering, malformed input, sections, limits.

mod basics {
    use super::super::*;
    use serde_json::json;

    fn vars(env: Value) -> Vars {
        let tags = BTreeMap::from([("env".to_string(), "prod".to_string())]);
        Vars::new(&env, &tags).unwrap()
    }

    #[test]
    fn renders_env_tags_nested_and_numbers() {
        let v = vars(json!({"message": "hi", "nested": {"message": "deep"}, "n": 3, "b": true}));
        assert_eq!(v.render("{{ message }}").unwrap(), "hi");
        assert_eq!(v.render("{{ nested.message }}").unwrap(), "deep");
        assert_eq!(v.render("n={{n}} b={{b}}").unwrap(), "n=3 b=true");
        assert_eq!(v.render("alpha {{ tag:env }}").unwrap(), "alpha prod");
        assert_eq!(v.render("left '{{ blank }}'").unwrap(), "left ''");
    }

    #[test]
    fn escaping_rules() {
        let v = vars(json!({"x": "<a & \"b\">"}));
        assert_eq!(v.render("{{{x}}}").unwrap(), "<a & \"b\">");
        assert_eq!(v.render("{{& x}}").unwrap(), "<a & \"b\">");
        let escaped = v.render("{{x}}").unwrap();
        assert_eq!(escaped, "&lt;a &amp; &quot;b&quot;&gt;");
    }

    #[test]
    fn bad_templates_and_env_are_errors() {
        let v = vars(json!({}));
        assert!(v.render("{{#open}} never closed").is_err());
        assert!(Vars::new(&json!([1, 2]), &BTreeMap::new()).is_err());
    }

    #[test]
    fn command_line_quotes_and_escapes() {
        assert_eq!(command_line("echo", &[]), "echo");
        assert_eq!(
            command_line("echo", &["a b".into(), "$HOME".into()]),
            "echo \"a b\" \"$HOME\""
        );
        assert_eq!(
            command_line("echo", &["say \"hi\" \\o/".into()]),
            "echo \"say \\\"hi\\\" \\\\o/\""
        );
    }
}

mod robustness {
    use super::super::*;
    use serde_json::json;

    /// Malformed or odd templates are errors or text, never panics.
    #[test]
    fn odd_templates_never_panic() {
        let v = Vars::new(
            &json!({"x": "1", "list": [1, 2], "obj": {"a": "b"}, "t": true, "nil": null}),
            &BTreeMap::new(),
        )
        .unwrap();
        for t in [
            "{{",
            "}}",
            "{{}}",
            "{{{x}}",
            "{{/x}}",
            "{{#x}}",
            "{{^x}}",
            "{{#list}}{{.}}{{/list}}",
            "{{#obj}}{{a}}{{/obj}}",
            "{{>partial}}",
            "{{=<% %>=}}<% x %>",
            "{{!comment}}",
            "{{ list }}",
            "{{ obj }}",
            "{{ nil }}",
            "{{#t}}yes{{/t}}",
            "{{x.y.z}}",
            "{{&}}",
            "{{{}}}",
            "{{#x}}{{/y}}",
            "\u{0}{{x}}",
            "{{x}}{{",
            "{{ tag: }}",
        ] {
            let _ = v.render(t);
        }
    }
}

mod sections {
    use super::super::*;
    use serde_json::json;

    #[test]
    fn sections_lists_and_inverted() {
        let v = Vars::new(
            &json!({"list": ["a", "b"], "obj": {"k": "v"}, "yes": true, "no": false, "n": 0}),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(v.render("{{#list}}[{{.}}]{{/list}}").unwrap(), "[a][b]");
        assert_eq!(v.render("{{#obj}}{{k}}{{/obj}}").unwrap(), "v");
        assert_eq!(
            v.render("{{#yes}}Y{{/yes}}{{#no}}N{{/no}}{{^no}}!N{{/no}}")
                .unwrap(),
            "Y!N"
        );
        assert_eq!(v.render("{{^missing}}none{{/missing}}").unwrap(), "none");
        assert_eq!(v.render("{{! a comment }}x").unwrap(), "x");
        assert_eq!(
            v.render("{{list}}|{{obj}}").unwrap(),
            "[&quot;a&quot;,&quot;b&quot;]|{&quot;k&quot;:&quot;v&quot;}"
        );
        assert_eq!(v.render("{{n}}").unwrap(), "0");
        assert!(v.render("{{#a}}{{/b}}").is_err());
        assert!(v.render("{{/a}}").is_err());
        assert!(v.render("{{>p}}").is_err());
    }
}

mod limits {
    use super::super::*;
    use serde_json::json;
    use std::time::{Duration, Instant};

    const BOMB: &str = "{{#xs}}{{#xs}}{{#xs}}x{{/xs}}{{/xs}}{{/xs}}";

    fn thousand() -> Vars {
        let xs: Vec<u32> = (1..=1000).collect();
        Vars::new(&json!({ "xs": xs, "lt": "<" }), &BTreeMap::new()).unwrap()
    }

    /// Renders like `render_at_most`, and returns the buffer's capacity when it stopped.
    fn capacity_at_stop(vars: &Vars, text: &str, max: usize) -> (Result<(), RenderError>, usize) {
        let nodes = parse(text).unwrap();
        let mut out = Out {
            text: String::new(),
            empty: 0,
            max,
        };
        let done = render(&nodes, &mut vec![&vars.root], &mut out);
        (done, out.text.capacity())
    }

    /// Three nested sections over 1,000 items would be 10⁹ bytes: the render stops at the
    /// limit, at once, having built no more than it.
    #[test]
    fn a_nested_section_bomb_stops_at_the_limit() {
        let vars = thousand();
        let started = Instant::now();
        assert_eq!(
            vars.render_at_most(BOMB, 1 << 20),
            Err(RenderError::TooLarge)
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let (done, capacity) = capacity_at_stop(&vars, BOMB, 1 << 20);
        assert_eq!(done, Err(RenderError::TooLarge));
        assert!(capacity <= 2 << 20, "the buffer grew to {capacity} bytes");
        let err = vars.render(BOMB).unwrap_err();
        assert_eq!(
            err.0,
            "the rendered text is larger than --max-rendered-size (1 MiB)"
        );
    }

    /// Sections that write nothing still cost a byte per pass: 10⁹ empty passes are no way
    /// round the limit.
    #[test]
    fn a_bomb_that_writes_nothing_stops_too() {
        let vars = thousand();
        let started = Instant::now();
        for quiet in [
            "{{#xs}}{{#xs}}{{#xs}}{{/xs}}{{/xs}}{{/xs}}",
            "{{#xs}}{{#xs}}{{#xs}}{{missing}}{{^xs}}no{{/xs}}{{/xs}}{{/xs}}{{/xs}}",
        ] {
            assert_eq!(
                vars.render_at_most(quiet, 1 << 20),
                Err(RenderError::TooLarge),
                "{quiet}"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn the_limit_is_exact_and_counts_escapes() {
        let vars = thousand();
        let ten = "{{#xs}}{{#lt}}x{{/lt}}{{/xs}}";
        let vars10 = Vars::new(
            &json!({"xs": (1..=10).collect::<Vec<_>>(), "lt": "<"}),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(
            vars10.render_at_most(ten, 10),
            Ok(Rendered {
                text: "x".repeat(10),
                cost: 10
            })
        );
        assert_eq!(vars10.render_at_most(ten, 9), Err(RenderError::TooLarge));
        // `{{lt}}` writes `&lt;`: four bytes, not one.
        assert_eq!(vars.render_at_most("{{lt}}", 4).unwrap().text, "&lt;");
        assert_eq!(vars.render_at_most("{{lt}}", 3), Err(RenderError::TooLarge));
        assert_eq!(vars.render_at_most("{{{lt}}}", 1).unwrap().text, "<");
        // Text without a tag is returned as it is, whatever its size.
        assert_eq!(vars.render_at_most("plain", 0).unwrap().cost, 0);
        // An empty pass costs one.
        assert_eq!(
            vars10.render_at_most("{{#xs}}{{/xs}}", 10).unwrap(),
            Rendered {
                text: String::new(),
                cost: 10
            }
        );
    }

    /// Under the limits nothing changes.
    #[test]
    fn templates_under_the_limit_render_as_before() {
        let vars = Vars::new(
            &json!({"list": ["a", "b"], "x": "<a & \"b\">", "n": 3}),
            &BTreeMap::from([("env".to_string(), "prod".to_string())]),
        )
        .unwrap()
        .with_limits(Limits {
            field: 64,
            total: 64,
        });
        assert_eq!(vars.render("{{#list}}[{{.}}]{{/list}}").unwrap(), "[a][b]");
        assert_eq!(
            vars.render("{{x}}").unwrap(),
            "&lt;a &amp; &quot;b&quot;&gt;"
        );
        assert_eq!(vars.render("n={{n}} {{tag:env}}").unwrap(), "n=3 prod");
        assert!(vars
            .render("{{#list}}{{#list}}{{#list}}{{x}}{{/list}}{{/list}}{{/list}}")
            .unwrap_err()
            .0
            .ends_with("--max-rendered-size (64 bytes)"));
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(Size(1 << 20).to_string(), "1 MiB");
        assert_eq!(Size(64 << 20).to_string(), "64 MiB");
        assert_eq!(Size(512 << 10).to_string(), "512 KiB");
        assert_eq!(Size(1_000_000).to_string(), "1000000 bytes");
        assert_eq!(Size(1).to_string(), "1 byte");
        assert_eq!(Size(3 << 30).to_string(), "3 GiB");
    }
}
