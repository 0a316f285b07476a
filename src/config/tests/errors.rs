//! Where errors point: file, line, column and key, for syntax, TOML-layer
//! and semantic errors, and the server, admin and log sections.

use super::*;

#[test]
fn server_tls_errors() {
    let cases: &[(&str, usize, &str)] = &[
        ("[server.tls]\nkey = \"k.pem\"", 1, "server.tls.cert"),
        ("[server.tls]\ncert = \"c.pem\"", 1, "server.tls.key"),
        (
            "[server.tls]\ncert = \"\"\nkey = \"k.pem\"",
            2,
            "server.tls.cert",
        ),
        (
            "[server.tls]\ncert = \"c.pem\"\nkey = \" \"",
            3,
            "server.tls.key",
        ),
        (
            "[server.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nca = \"ca.pem\"",
            4,
            "server.tls.ca",
        ),
        (
            "[server]\ntls = { cert = 1, key = \"k.pem\" }",
            2,
            "server.tls.cert",
        ),
    ];
    for (head, line, key) in cases {
        let (l, _, k, message) = fail(&format!("{head}\n{MINIMAL}"));
        assert_eq!((l, k.as_str()), (*line, *key), "{head}: {message}");
    }
}

#[test]
fn server_names() {
    for (input, expected) in [
        ("api.internal", "api.internal"),
        ("API.Internal", "api.internal"),
        ("localhost", "localhost"),
        ("a-b.c_d.example", "a-b.c_d.example"),
        ("10.0.0.1", "10.0.0.1"),
        ("::1", "::1"),
        ("fd00:0::0001", "fd00::1"),
        ("3com.example", "3com.example"),
    ] {
        assert_eq!(parse_server_name(input).as_deref(), Ok(expected));
    }
    for bad in [
        "",
        "[::1]",
        "api:443",
        "*.example.com",
        "a..b",
        "example.com.",
        "-a.example",
        "a-.example",
        "exa mple",
        "ü.de",
        "10.0.0.256",
        "1.2.3",
        &"a".repeat(64),
        &["a"; 128].join("."),
    ] {
        assert!(parse_server_name(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn trusted_proxy_errors() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "trusted_proxies = [\"10.0.0.0/33\"]",
            2,
            "server.trusted_proxies[0]",
        ),
        (
            "trusted_proxies = [\"10.0.0.0/8\", \"localhost\"]",
            2,
            "server.trusted_proxies[1]",
        ),
        (
            "trusted_proxies = [\n  \"::1\",\n  \"10.0.0.1/8\",\n]",
            4,
            "server.trusted_proxies[1]",
        ),
        (
            "trusted_proxies = [\"::ffff:10.0.0.1\"]",
            2,
            "server.trusted_proxies[0]",
        ),
        ("trusted_proxies = [\"\"]", 2, "server.trusted_proxies[0]"),
        (
            "trusted_proxies = \"10.0.0.0/8\"",
            2,
            "server.trusted_proxies",
        ),
    ];
    for (body, line, key) in cases {
        let (l, _, k, message) = fail(&format!("[server]\n{body}\n{MINIMAL}"));
        assert_eq!((l, k.as_str()), (*line, *key), "{body}: {message}");
    }
}

#[test]
fn error_display_names_file_line_column_and_key() {
    let err = parse(&with_route_extra("[routes.limit]\nrate = 0")).expect_err("rate 0");
    let shown = err.to_string();
    assert!(
        shown.starts_with("test.toml:9:8: key `routes[0].limit.rate`: "),
        "{shown}"
    );
}

#[test]
fn semantic_errors_point_at_the_value() {
    let cases: &[(&str, usize, &str)] = &[
        ("[routes.limit]\nrate = -3", 9, "routes[0].limit.rate"),
        ("[routes.limit]\nrate = nan", 9, "routes[0].limit.rate"),
        ("[routes.limit]\nrate = inf", 9, "routes[0].limit.rate"),
        (
            "[routes.limit]\nrate = 1\nburst = 0",
            10,
            "routes[0].limit.burst",
        ),
        (
            "[routes.limit]\nrate = 1\nburst = 5000000000",
            10,
            "routes[0].limit.burst",
        ),
        (
            "[routes.queue]\ntimeout = \"0s\"",
            9,
            "routes[0].queue.timeout",
        ),
        (
            "[routes.queue]\ncapacity = -1",
            9,
            "routes[0].queue.capacity",
        ),
        (
            "[routes.reject]\nstatus = 302",
            9,
            "routes[0].reject.status",
        ),
        (
            "[routes.reject]\nstatus = 600",
            9,
            "routes[0].reject.status",
        ),
        ("path_prefix = \"api\"", 8, "routes[0].path_prefix"),
        ("path_prefix = \"/a?b\"", 8, "routes[0].path_prefix"),
        ("host = \"a.*.com\"", 8, "routes[0].host"),
        ("host = \"a.com:80\"", 8, "routes[0].host"),
        ("host = \"\"", 8, "routes[0].host"),
        ("methods = [\"GET\", \"get\"]", 8, "routes[0].methods[1]"),
        ("methods = [\"GET\", \"GET\"]", 8, "routes[0].methods[1]"),
        ("methods = [\"G T\"]", 8, "routes[0].methods[0]"),
    ];
    for (extra, line, key) in cases {
        let (l, _, k, message) = fail(&with_route_extra(extra));
        assert_eq!((l, k.as_str()), (*line, *key), "{extra}: {message}");
    }
}

#[test]
fn server_admin_log_errors() {
    let cases: &[(&str, usize, &str)] = &[
        ("[server]\nlisten = \"localhost:8080\"", 2, "server.listen"),
        (
            "[server]\nheader_timeout = \"10\"",
            2,
            "server.header_timeout",
        ),
        (
            "[server]\nheader_timeout = \"0ms\"",
            2,
            "server.header_timeout",
        ),
        ("[server]\nidle_timeout = \"0s\"", 2, "server.idle_timeout"),
        ("[server]\nbacklog = 0", 2, "server.backlog"),
        ("[server]\nbacklog = 65536", 2, "server.backlog"),
        (
            "[server]\nrequest_buffer_bytes = -1",
            2,
            "server.request_buffer_bytes",
        ),
        (
            "[server]\nrequest_buffer_bytes = 16777217",
            2,
            "server.request_buffer_bytes",
        ),
        (
            "[server]\nclient_body_timeout = \"0s\"",
            2,
            "server.client_body_timeout",
        ),
        (
            "[server]\nsend_timeout = \"soon\"",
            2,
            "server.send_timeout",
        ),
        (
            "[server]\nmax_header_bytes = 8191",
            2,
            "server.max_header_bytes",
        ),
        ("[server]\nmax_headers = 0", 2, "server.max_headers"),
        ("[server]\ndrain_timeout = 30", 2, "server.drain_timeout"),
        ("[admin]\nlisten = \"127.0.0.1:8080\"", 2, "admin.listen"),
        ("[log]\nformat = \"xml\"", 2, "log.format"),
        ("[log]\nlevel = \"\"", 2, "log.level"),
        ("[log]\nlevel = \"info,x=loud\"", 2, "log.level"),
        ("[log]\naccess_log = \"yes\"", 2, "log.access_log"),
    ];
    for (head, line, key) in cases {
        let (l, _, k, message) = fail(&format!("{head}\n{MINIMAL}"));
        assert_eq!((l, k.as_str()), (*line, *key), "{head}: {message}");
    }
}

#[test]
fn server_listen_clashing_with_default_admin_is_blamed_on_server() {
    let (line, _, key, _) = fail(&format!("[server]\nlisten = \"127.0.0.1:9090\"\n{MINIMAL}"));
    assert_eq!((line, key.as_str()), (2, "server.listen"));
    // Port 0 binds any free port, so both may ask for it.
    let both_zero = "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    assert!(parse(&format!("{both_zero}{MINIMAL}")).is_ok());
}

#[test]
fn missing_sections_and_empty_lists() {
    let no_routes = "[upstreams.api]\ntargets = [\"a:1\"]\n";
    assert_eq!(fail(no_routes).2, "routes");
    assert_eq!(fail(&format!("{no_routes}routes = []\n")).0, 3);
    assert_eq!(
        fail("[[routes]]\nname = \"a\"\nupstream = \"a\"\n").2,
        "upstreams"
    );
    let (line, _, key, _) =
        fail("# nothing\n[upstreams]\n[[routes]]\nname = \"a\"\nupstream = \"a\"\n");
    assert_eq!((line, key.as_str()), (2, "upstreams"));
    assert_eq!(fail("").2, "upstreams");
}

#[test]
fn route_reference_and_duplicate_errors() {
    let (line, column, key, message) = fail(&with_route_extra(
        "[[routes]]\nname = \"b\"\nupstream = \"nope\"",
    ));
    assert_eq!((line, column, key.as_str()), (10, 12, "routes[1].upstream"));
    assert!(message.contains("\"nope\""), "{message}");
    let (line, _, key, message) = fail(&with_route_extra(
        "[[routes]]\nname = \"default\"\nupstream = \"api\"",
    ));
    assert_eq!((line, key.as_str()), (9, "routes[1].name"));
    assert!(message.contains("line 6"), "{message}");
}

#[test]
fn toml_layer_errors_get_the_full_key() {
    let cases: &[(String, usize, &str)] = &[
            (format!("bogus = 1\n{MINIMAL}"), 1, "bogus"),
            (
                format!("[server]\nlisten = \"127.0.0.1:1\"\nlistn = 2\n{MINIMAL}"),
                3,
                "server.listn",
            ),
            (
                with_route_extra("[routes.limit]\nrate = 1\nburts = 2"),
                10,
                "routes[0].limit.burts",
            ),
            (
                with_route_extra("limit = { rate = 1, burts = 2 }"),
                8,
                "routes[0].limit.burts",
            ),
            (
                with_route_extra("limit.burts = 2"),
                8,
                "routes[0].limit.burts",
            ),
            (
                with_route_extra("[routes.limit]\nburst = 2"),
                8,
                "routes[0].limit.rate",
            ),
            (with_route_extra("limit = {}"), 8, "routes[0].limit.rate"),
            (
                with_route_extra("[[routes]]\nname = \"b\""),
                8,
                "routes[1].upstream",
            ),
            (
                with_route_extra("[[routes]]\nupstream = \"api\""),
                8,
                "routes[1].name",
            ),
            (
                with_route_extra("[routes.queue]\ncapacity = \"big\""),
                9,
                "routes[0].queue.capacity",
            ),
            (
                with_route_extra("[routes.queue]\ncapacity = 1.5"),
                9,
                "routes[0].queue.capacity",
            ),
            (
                with_route_extra("[routes.limit]\nrate = \"fast\""),
                9,
                "routes[0].limit.rate",
            ),
            (
                format!("[upstreams.b]\ntargets = [\n  \"a:1\",\n  2,\n]\n{MINIMAL}"),
                4,
                "upstreams.b.targets[1]",
            ),
            (
                format!("[upstreams.b]\ntargets = [\"a:1\"]\nweight = 2\n{MINIMAL}"),
                3,
                "upstreams.b.weight",
            ),
            (
                "routes = 3\n[upstreams.a]\ntargets = [\"a:1\"]\n".to_string(),
                1,
                "routes",
            ),
            (
                "routes = [{ name = \"x\" }]\n[upstreams.a]\ntargets = [\"a:1\"]\n".to_string(),
                1,
                "routes[0].upstream",
            ),
            (
                "[upstreams.a]\ntargets = [\"a:1\"]\n[[routes]]\nname = \"x\"\nupstream = \"a\"\n[routes.limit.rate]\n".to_string(),
                6,
                "routes[0].limit.rate",
            ),
        ];
    for (src, line, key) in cases {
        let (l, _, k, message) = fail(src);
        assert_eq!((l, k.as_str()), (*line, *key), "{src}\n{message}");
    }
}

#[test]
fn syntax_errors_are_located() {
    let cases: &[(String, usize, &str)] = &[
        (format!("[server\n{MINIMAL}"), 1, "server"),
        (
            with_route_extra("[routes.limit]\nrate = "),
            9,
            "routes[0].limit.rate",
        ),
        (
            with_route_extra("[routes.limit]\nrate = 1 2"),
            9,
            "routes[0].limit.rate",
        ),
        (
            with_route_extra("[routes.reject]\nstatus = \"5"),
            9,
            "routes[0].reject.status",
        ),
        (
            format!("{MINIMAL}[log]\nlevel = \"info\"\nlevel = \"debug\"\n"),
            10,
            "log.level",
        ),
        (format!("!!!\n{MINIMAL}"), 1, "(top level)"),
    ];
    for (src, line, key) in cases {
        let (l, _, k, message) = fail(src);
        assert_eq!((l, k.as_str()), (*line, *key), "{src}\n{message}");
    }
}

/// Truncations and byte edits of a real file must all give Ok or Invalid,
/// never a panic, and always a line inside the file.
#[test]
fn broken_input_never_panics() {
    let example = include_str!("../../../config/sluice.toml");
    let check = |src: &str| match Config::parse(src, Path::new("x.toml")) {
        Ok(_) => {}
        Err(ConfigError::Invalid { line, column, .. }) => {
            assert!(
                line >= 1 && line <= src.lines().count().max(1) + 1,
                "line {line}"
            );
            assert!(column >= 1);
        }
        Err(other) => panic!("unexpected error {other}"),
    };
    let boundaries: Vec<usize> = (0..=example.len())
        .filter(|&i| example.is_char_boundary(i))
        .collect();
    for &end in boundaries.iter().step_by(13) {
        check(&example[..end]);
    }
    for &at in boundaries.iter().step_by(41) {
        for insert in [
            "[", "]", "\"", "'", "{", "=", "\n", "#", ",", "\"\"\"", "é", "\u{0}",
        ] {
            check(&format!("{}{insert}{}", &example[..at], &example[at..]));
        }
    }
    // The locator itself, at every offset, including ones inside a character.
    let (full, _) = toml::de::DeTable::parse_recoverable(FULL);
    for offset in 0..=FULL.len() + 2 {
        key_path_at(FULL, full.get_ref(), offset);
        line_column("é\u{feff}x", offset % 8);
    }
}
