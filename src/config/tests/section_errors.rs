//! Errors in upstreams, routes, keys, limits, queues and classes.

use super::*;

#[test]
fn upstream_balancing_health_and_tls_errors() {
    let cases: &[(&str, usize, &str)] = &[
        ("targets = [\"a:1 weight=0\"]", 2, "upstreams.b.targets[0]"),
        ("targets = [\"a:1 weight=x\"]", 2, "upstreams.b.targets[0]"),
        ("targets = [\"a:1 weight=-1\"]", 2, "upstreams.b.targets[0]"),
        ("targets = [\"a:1 weight=\"]", 2, "upstreams.b.targets[0]"),
        (
            "targets = [\"a:1 weight=4294967296\"]",
            2,
            "upstreams.b.targets[0]",
        ),
        (
            "targets = [\"a:1\", \"a:2 max_inflight=0\"]",
            2,
            "upstreams.b.targets[1]",
        ),
        ("targets = [\"a:1 foo=1\"]", 2, "upstreams.b.targets[0]"),
        ("targets = [\"a:1 weight\"]", 2, "upstreams.b.targets[0]"),
        (
            "targets = [\n  \"a:1\",\n  \"a:2 weight=2 weight=2\",\n]",
            4,
            "upstreams.b.targets[1]",
        ),
        ("targets = [\"weight=2 a:1\"]", 2, "upstreams.b.targets[0]"),
        (
            "targets = [\"a:1\"]\nbalance = \"random\"",
            3,
            "upstreams.b.balance",
        ),
        ("targets = [\"a:1\"]\nbalance = 1", 3, "upstreams.b.balance"),
        ("targets = [\"a:1\"]\nretries = 6", 3, "upstreams.b.retries"),
        (
            "targets = [\"a:1\"]\nretries = -1",
            3,
            "upstreams.b.retries",
        ),
        (
            "targets = [\"a:1\"]\nhttp2 = \"yes\"",
            3,
            "upstreams.b.http2",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.passive_health]\nconsecutive_failures = -1",
            4,
            "upstreams.b.passive_health.consecutive_failures",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.passive_health]\nbase_ejection = \"0s\"",
            4,
            "upstreams.b.passive_health.base_ejection",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.passive_health]\nbase_ejection = \"2m\"",
            4,
            "upstreams.b.passive_health.base_ejection",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.passive_health]\nmax_ejection = \"1s\"",
            4,
            "upstreams.b.passive_health.max_ejection",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.passive_health]\nbase_ejection = \"10s\"\nmax_ejection = \"9s\"",
            5,
            "upstreams.b.passive_health.max_ejection",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.passive_health]\nmax_ejection = \"9s\"\nbase_ejection = \"10s\"",
            5,
            "upstreams.b.passive_health.base_ejection",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.passive_health]\nfailures = 3",
            4,
            "upstreams.b.passive_health.failures",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.active_health]\npath = \"healthz\"",
            4,
            "upstreams.b.active_health.path",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.active_health]\npath = \"/a b\"",
            4,
            "upstreams.b.active_health.path",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.active_health]\npath = \"/a#b\"",
            4,
            "upstreams.b.active_health.path",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.active_health]\ninterval = \"0s\"",
            4,
            "upstreams.b.active_health.interval",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.active_health]\ntimeout = \"0s\"",
            4,
            "upstreams.b.active_health.timeout",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.active_health]\ntimeout = \"6s\"",
            4,
            "upstreams.b.active_health.timeout",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.active_health]\ninterval = \"2s\"\ntimeout = \"3s\"",
            5,
            "upstreams.b.active_health.timeout",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.active_health]\ntimeout = \"3s\"\ninterval = \"2s\"",
            5,
            "upstreams.b.active_health.interval",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.active_health]\ninterval = \"500ms\"",
            4,
            "upstreams.b.active_health.interval",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.active_health]\nhealthy_threshold = 0",
            4,
            "upstreams.b.active_health.healthy_threshold",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.active_health]\nunhealthy_threshold = -3",
            4,
            "upstreams.b.active_health.unhealthy_threshold",
        ),
        (
            "targets = [\"a:1\"]\nactive_health = { method = \"HEAD\" }",
            3,
            "upstreams.b.active_health.method",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.adaptive]\nmin_limit = 0",
            4,
            "upstreams.b.adaptive.min_limit",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.adaptive]\nmin_limit = 300",
            4,
            "upstreams.b.adaptive.min_limit",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.adaptive]\nmax_limit = 257",
            4,
            "upstreams.b.adaptive.max_limit",
        ),
        (
            "targets = [\"a:1\"]\nmax_inflight = 10\n[upstreams.b.adaptive]\nmax_limit = 11",
            5,
            "upstreams.b.adaptive.max_limit",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.adaptive]\nmin_limit = 5\nmax_limit = 4",
            5,
            "upstreams.b.adaptive.max_limit",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.adaptive]\nmax_limit = 0",
            4,
            "upstreams.b.adaptive.max_limit",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.adaptive]\nmin_limit = 5\ninitial_limit = 4",
            5,
            "upstreams.b.adaptive.initial_limit",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.adaptive]\nmax_limit = 10\ninitial_limit = 11",
            5,
            "upstreams.b.adaptive.initial_limit",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.adaptive]\ntolerance = 0.99",
            4,
            "upstreams.b.adaptive.tolerance",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.adaptive]\ntolerance = inf",
            4,
            "upstreams.b.adaptive.tolerance",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.adaptive]\ntolerance = nan",
            4,
            "upstreams.b.adaptive.tolerance",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.adaptive]\nsmoothing = 0",
            4,
            "upstreams.b.adaptive.smoothing",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.adaptive]\nsmoothing = 1.01",
            4,
            "upstreams.b.adaptive.smoothing",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.adaptive]\nsmoothing = nan",
            4,
            "upstreams.b.adaptive.smoothing",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.adaptive]\nlimit = 3",
            4,
            "upstreams.b.adaptive.limit",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.tls]\nca = \"\"",
            4,
            "upstreams.b.tls.ca",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.tls]\nserver_name = \"*.internal\"",
            4,
            "upstreams.b.tls.server_name",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.tls]\nserver_name = \"api.internal:443\"",
            4,
            "upstreams.b.tls.server_name",
        ),
        (
            "targets = [\"a:1\"]\n[upstreams.b.tls]\nsni = \"api\"",
            4,
            "upstreams.b.tls.sni",
        ),
        ("targets = [\"a:1\"]\ntls = true", 3, "upstreams.b.tls"),
    ];
    for (body, line, key) in cases {
        let (l, _, k, message) = fail(&format!("[upstreams.b]\n{body}\n{MINIMAL}"));
        assert_eq!((l, k.as_str()), (*line, *key), "{body}: {message}");
    }
    let message = |body: &str| fail(&format!("[upstreams.b]\n{body}\n{MINIMAL}")).3;
    for (body, expected) in [
        (
            "targets = [\"a:1 weight=0\"]",
            "weight must be from 1 to 10000, got 0",
        ),
        (
            "targets = [\"a:1 weight=x\"]",
            "weight=x: expected a whole number",
        ),
        ("targets = [\"a:1 foo=1\"]", "unknown option \"foo\""),
        (
            "targets = [\"a:1 max_inflight=2 max_inflight=2\"]",
            "duplicate option \"max_inflight\"",
        ),
        (
            "targets = [\"a:1\"]\nbalance = \"random\"",
            "\"round_robin\", \"least_inflight\" or \"p2c_ewma\"",
        ),
        (
            "targets = [\"a:1\"]\nmax_inflight = 10\nadaptive = { max_limit = 11 }",
            "at most the upstream's max_inflight (10)",
        ),
        (
            "targets = [\"a:1\"]\nactive_health = { timeout = \"6s\" }",
            "at most the probe interval (5s)",
        ),
    ] {
        let message = message(body);
        assert!(message.contains(expected), "{body}: {message}");
    }
}

#[test]
fn upstream_errors() {
    let cases: &[(&str, usize, &str)] = &[
        ("targets = []", 2, "upstreams.b.targets"),
        ("targets = [\"nohost\"]", 2, "upstreams.b.targets[0]"),
        (
            "targets = [\"a:1\",\n  \"b:0\"]",
            3,
            "upstreams.b.targets[1]",
        ),
        ("targets = [\"user@a:1\"]", 2, "upstreams.b.targets[0]"),
        ("targets = [\"http://a:1\"]", 2, "upstreams.b.targets[0]"),
        (
            "targets = [\"a:1\"]\nmax_inflight = 0",
            3,
            "upstreams.b.max_inflight",
        ),
        (
            "targets = [\"a:1\"]\ntimeout = \"0s\"",
            3,
            "upstreams.b.timeout",
        ),
        (
            "targets = [\"a:1\"]\nconnect_timeout = \"x\"",
            3,
            "upstreams.b.connect_timeout",
        ),
        (
            "targets = [\"a:1\"]\npool_max_idle_per_target = -1",
            3,
            "upstreams.b.pool_max_idle_per_target",
        ),
        ("max_inflight = 3", 1, "upstreams.b.targets"),
    ];
    for (body, line, key) in cases {
        let (l, _, k, message) = fail(&format!("[upstreams.b]\n{body}\n{MINIMAL}"));
        assert_eq!((l, k.as_str()), (*line, *key), "{body}: {message}");
    }
}

#[test]
fn key_limit_queue_and_reject_errors() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "[routes.key_limit]\nrate = 0",
            9,
            "routes[0].key_limit.rate",
        ),
        (
            "[routes.key_limit]\nrate = -1",
            9,
            "routes[0].key_limit.rate",
        ),
        (
            "[routes.key_limit]\nrate = nan",
            9,
            "routes[0].key_limit.rate",
        ),
        (
            "[routes.key_limit]\nrate = inf",
            9,
            "routes[0].key_limit.rate",
        ),
        (
            "[routes.key_limit]\nrate = 1\nburst = 0",
            10,
            "routes[0].key_limit.burst",
        ),
        (
            "[routes.key_limit]\nrate = 1\nmax_keys = 0",
            10,
            "routes[0].key_limit.max_keys",
        ),
        (
            "[routes.key_limit]\nrate = 1\nmax_keys = -5",
            10,
            "routes[0].key_limit.max_keys",
        ),
        (
            "[routes.key_limit]\nburst = 2",
            8,
            "routes[0].key_limit.rate",
        ),
        (
            "[routes.key_limit]\nrate = 1\nmax_key = 2",
            10,
            "routes[0].key_limit.max_key",
        ),
        (
            "[routes.key_limit]\nrate = 1\ndry_run = \"yes\"",
            10,
            "routes[0].key_limit.dry_run",
        ),
        (
            "[routes.limit]\nrate = 1\ndry_run = 1",
            10,
            "routes[0].limit.dry_run",
        ),
        (
            "[routes.queue]\nlifo_threshold = \"1s\"",
            9,
            "routes[0].queue.lifo_threshold",
        ),
        (
            "[routes.queue]\ndiscipline = \"fifo\"\nlifo_threshold = \"100ms\"",
            10,
            "routes[0].queue.lifo_threshold",
        ),
        (
            "[routes.queue]\ndiscipline = \"adaptive_lifo\"\nlifo_threshold = \"1s\"",
            10,
            "routes[0].queue.lifo_threshold",
        ),
        (
            "[routes.queue]\ntimeout = \"2s\"\ndiscipline = \"adaptive_lifo\"\nlifo_threshold = \"3s\"",
            11,
            "routes[0].queue.lifo_threshold",
        ),
        (
            "[routes.queue]\ndiscipline = \"adaptive_lifo\"\nlifo_threshold = \"0s\"",
            10,
            "routes[0].queue.lifo_threshold",
        ),
        (
            "[routes.queue]\ndiscipline = \"adaptive_lifo\"\nlifo_threshold = \"soon\"",
            10,
            "routes[0].queue.lifo_threshold",
        ),
        (
            "[routes.queue]\ntimeout = \"1ns\"\ndiscipline = \"adaptive_lifo\"",
            10,
            "routes[0].queue.discipline",
        ),
        (
            "[routes.queue]\ndiscipline = \"lifo\"",
            9,
            "routes[0].queue.discipline",
        ),
        (
            "[routes.queue]\nfairness = \"per_ip\"",
            9,
            "routes[0].queue.fairness",
        ),
        ("[routes.queue]\naging = \"0s\"", 9, "routes[0].queue.aging"),
        ("[routes.queue]\naging = 1", 9, "routes[0].queue.aging"),
        (
            "[routes.reject]\nrate_limited_status = 399",
            9,
            "routes[0].reject.rate_limited_status",
        ),
        (
            "[routes.reject]\nrate_limited_status = 600",
            9,
            "routes[0].reject.rate_limited_status",
        ),
    ];
    for (extra, line, key) in cases {
        let (l, _, k, message) = fail(&with_route_extra(extra));
        assert_eq!((l, k.as_str()), (*line, *key), "{extra}: {message}");
    }
    let (.., message) = fail(&with_route_extra("[routes.queue]\ndiscipline = \"lifo\""));
    assert!(
        message.contains("\"fifo\" or \"adaptive_lifo\""),
        "{message}"
    );
    let (.., message) = fail(&with_route_extra("[routes.queue]\nfairness = \"x\""));
    assert!(message.contains("\"none\" or \"per_key\""), "{message}");
    let (.., message) = fail(&with_route_extra("[routes.queue]\nlifo_threshold = \"1s\""));
    assert!(message.contains("adaptive_lifo"), "{message}");
}

#[test]
fn key_errors() {
    let cases: &[(&str, usize, &str)] = &[
        ("key = \"ip\"", 8, "routes[0].key"),
        ("key = \"Client_IP\"", 8, "routes[0].key"),
        ("key = []", 8, "routes[0].key"),
        ("key = 3", 8, "routes[0].key"),
        ("key = [\"client_ip\", \"cookie:x\"]", 8, "routes[0].key[1]"),
        ("key = [\"client_ip\", \"header:\"]", 8, "routes[0].key[1]"),
        ("key = [\"header:x y\"]", 8, "routes[0].key[0]"),
        (
            "key = [\"header:x-a\", \"header:X-A\"]",
            8,
            "routes[0].key[1]",
        ),
        (
            "key = [\n  \"path\",\n  \"path\",\n]",
            10,
            "routes[0].key[1]",
        ),
        ("key = [\"path\", 2]", 8, "routes[0].key[1]"),
    ];
    for (extra, line, key) in cases {
        let (l, _, k, message) = fail(&with_route_extra(extra));
        assert_eq!((l, k.as_str()), (*line, *key), "{extra}: {message}");
    }
    let (.., message) = fail(&with_route_extra("key = \"ip\""));
    assert!(
        message.contains("\"client_ip\", \"path\" or \"header:NAME\""),
        "{message}"
    );
    let (.., message) = fail(&with_route_extra("key = [\"header:x-a\", \"header:X-A\"]"));
    assert!(
        message.contains("duplicate key part \"header:x-a\""),
        "{message}"
    );
}

#[test]
fn class_errors() {
    const C: &str = "[[routes.classes]]";
    let cases: &[(String, usize, &str)] = &[
        (
            format!("{C}\nheader = \"x\"\nvalues = [\"a\"]"),
            8,
            "routes[0].classes[0].name",
        ),
        (
            format!("{C}\nname = \"\"\nmethods = [\"GET\"]"),
            9,
            "routes[0].classes[0].name",
        ),
        (
            format!("{C}\nname = \"default\"\nmethods = [\"GET\"]"),
            9,
            "routes[0].classes[0].name",
        ),
        (
            format!(
                "{C}\nname = \"a\"\nmethods = [\"GET\"]\n{C}\nname = \"a\"\npath_prefix = \"/x\""
            ),
            12,
            "routes[0].classes[1].name",
        ),
        (format!("{C}\nname = \"a\""), 8, "routes[0].classes[0]"),
        (
            format!("{C}\nname = \"a\"\npath_prefix = \"/a\"\nmethods = [\"GET\"]"),
            11,
            "routes[0].classes[0].methods",
        ),
        (
            format!("{C}\nname = \"a\"\nmethods = [\"GET\"]\nheader = \"x\"\nvalues = [\"1\"]"),
            11,
            "routes[0].classes[0].header",
        ),
        (
            format!("{C}\nname = \"a\"\npath_prefix = \"/a\"\nvalues = [\"1\"]"),
            11,
            "routes[0].classes[0].values",
        ),
        (
            format!("{C}\nname = \"a\"\nvalues = [\"1\"]"),
            10,
            "routes[0].classes[0].values",
        ),
        (
            format!("{C}\nname = \"a\"\nheader = \"x\""),
            10,
            "routes[0].classes[0].values",
        ),
        (
            format!("{C}\nname = \"a\"\nheader = \"x\"\nvalues = []"),
            11,
            "routes[0].classes[0].values",
        ),
        (
            format!("{C}\nname = \"a\"\nheader = \"x\"\nvalues = [\"ok\", \"a\\nb\"]"),
            11,
            "routes[0].classes[0].values[1]",
        ),
        (
            format!("{C}\nname = \"a\"\nheader = \"x:y\"\nvalues = [\"1\"]"),
            10,
            "routes[0].classes[0].header",
        ),
        (
            format!("{C}\nname = \"a\"\npath_prefix = \"a\""),
            10,
            "routes[0].classes[0].path_prefix",
        ),
        (
            format!("{C}\nname = \"a\"\nmethods = []"),
            10,
            "routes[0].classes[0].methods",
        ),
        (
            format!("{C}\nname = \"a\"\nmethods = [\"GET\", \"post\"]"),
            10,
            "routes[0].classes[0].methods[1]",
        ),
        (
            format!("{C}\nname = \"a\"\nmethods = [\"GET\"]\npriority = 1"),
            11,
            "routes[0].classes[0].priority",
        ),
        (
            "classes = [{ name = \"a\", methods = [\"GET\"], weight = 2 }]".to_string(),
            8,
            "routes[0].classes[0].weight",
        ),
        (
            "classes = [{ name = \"a\", methods = [\"GET\"] }, { name = \"b\" }]".to_string(),
            8,
            "routes[0].classes[1]",
        ),
    ];
    for (extra, line, key) in cases {
        let (l, _, k, message) = fail(&with_route_extra(extra));
        assert_eq!((l, k.as_str()), (*line, *key), "{extra}: {message}");
    }
    let classes = |n: usize| -> String {
        (0..n)
            .map(|i| format!("{C}\nname = \"c{i}\"\npath_prefix = \"/{i}\"\n"))
            .collect()
    };
    let (line, _, key, message) = fail(&with_route_extra(&classes(9)));
    assert_eq!(
        (line, key.as_str()),
        (8 + 8 * 3, "routes[0].classes[8]"),
        "{message}"
    );
    assert!(message.contains("at most 8"), "{message}");
    assert!(parse(&with_route_extra(&classes(8))).is_ok());
}
