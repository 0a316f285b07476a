//! Errors in `[redis]` and in limits that use it.

use super::*;

#[test]
fn redis_section_errors() {
    // MINIMAL is 7 lines, then an empty route extra and a blank line: `[redis]` is line 10.
    let cases: &[(&str, usize, &str, &str)] = &[
        ("key_prefix = \"x\"", 10, "redis.url", "missing field `url`"),
        ("url = 6379", 11, "redis.url", "string"),
        (
            "url = \"rediss://redis.internal:6380\"",
            11,
            "redis.url",
            "TLS to Redis is not supported; use a local TLS tunnel or redis://",
        ),
        (
            "url = \"REDISS://redis.internal\"",
            11,
            "redis.url",
            "TLS to Redis is not supported",
        ),
        (
            "url = \"valkeys://redis.internal\"",
            11,
            "redis.url",
            "TLS to Redis is not supported",
        ),
        (
            "url = \"http://redis.internal\"",
            11,
            "redis.url",
            "invalid Redis URL: Redis URL did not parse",
        ),
        (
            "url = \"redis.internal:6379\"",
            11,
            "redis.url",
            "invalid Redis URL",
        ),
        ("url = \"\"", 11, "redis.url", "invalid Redis URL"),
        (
            "url = \"redis://0.0.0.0:6379\"",
            11,
            "redis.url",
            "wildcard address",
        ),
        (
            "url = \"redis://127.0.0.1/db1\"",
            11,
            "redis.url",
            "Invalid database number",
        ),
        (
            "url = \"redis://127.0.0.1\"\npassword = \"x\"",
            12,
            "redis.password",
            "unknown field `password`",
        ),
        (
            "url = \"redis://127.0.0.1\"\nkey_prefix = \"\"",
            12,
            "redis.key_prefix",
            "must not be empty",
        ),
        (
            "url = \"redis://127.0.0.1\"\nkey_prefix = \"shop eu\"",
            12,
            "redis.key_prefix",
            "whitespace or control characters, got ' '",
        ),
        (
            "url = \"redis://127.0.0.1\"\nkey_prefix = \"shop\\u0007\"",
            12,
            "redis.key_prefix",
            "whitespace or control characters",
        ),
        (
            "url = \"redis://127.0.0.1\"\ntimeout = \"0s\"",
            12,
            "redis.timeout",
            "must be greater than 0",
        ),
        (
            "url = \"redis://127.0.0.1\"\ntimeout = \"10s 1ms\"",
            12,
            "redis.timeout",
            "must be at most 10s, got 10s 1ms",
        ),
        (
            "url = \"redis://127.0.0.1\"\ntimeout = \"50\"",
            12,
            "redis.timeout",
            "invalid duration",
        ),
        (
            "url = \"redis://127.0.0.1\"\ntimeout = 50",
            12,
            "redis.timeout",
            "string",
        ),
    ];
    for (redis, line, key, expected) in cases {
        let (l, _, k, message) = fail(&with_redis("", redis));
        assert_eq!((l, k.as_str()), (*line, *key), "{redis}: {message}");
        assert!(message.contains(expected), "{redis}: {message}");
    }
    let long = format!(
        "url = \"redis://127.0.0.1\"\nkey_prefix = \"{}\"",
        "p".repeat(129)
    );
    let (l, _, k, message) = fail(&with_redis("", &long));
    assert_eq!((l, k.as_str()), (12, "redis.key_prefix"), "{message}");
    assert!(message.contains("at most 128 bytes, got 129"), "{message}");
}

#[test]
fn redis_url_errors_do_not_show_the_password() {
    let (.., message) = fail(&with_redis(
        "",
        "url = \"redis://user:hunter2@0.0.0.0:6379\"",
    ));
    assert!(!message.contains("hunter2"), "{message}");
}

#[test]
fn limit_backend_errors() {
    const REDIS: &str = "url = \"redis://127.0.0.1\"";
    // (route extra, line, key, message part); every case has a [redis] section.
    let cases: &[(&str, usize, &str, &str)] = &[
        (
            "[routes.limit]\nrate = 1\nbackend = \"global\"",
            10,
            "routes[0].limit.backend",
            "unknown backend \"global\": expected \"local\" or \"redis\"",
        ),
        (
            "[routes.limit]\nrate = 1\nbackend = 1",
            10,
            "routes[0].limit.backend",
            "string",
        ),
        (
            "[routes.limit]\nrate = 1\nlease = 5",
            10,
            "routes[0].limit.lease",
            "only allowed with backend = \"redis\"",
        ),
        (
            "[routes.limit]\nrate = 1\nbackend = \"local\"\non_redis_error = \"deny\"",
            11,
            "routes[0].limit.on_redis_error",
            "only allowed with backend = \"redis\"",
        ),
        (
            "[routes.limit]\nrate = 1\nexpected_instances = 3",
            10,
            "routes[0].limit.expected_instances",
            "only allowed with backend = \"redis\"",
        ),
        (
            // The first redis-only key written is blamed.
            "[routes.limit]\nrate = 1\nexpected_instances = 3\nlease = 2",
            10,
            "routes[0].limit.expected_instances",
            "only allowed with backend = \"redis\"",
        ),
        (
            "limit = { rate = 1, lease = 2 }",
            8,
            "routes[0].limit.lease",
            "only allowed with backend = \"redis\"",
        ),
        (
            "[routes.limit]\nrate = 1\nbackend = \"redis\"\ndry_run = true",
            11,
            "routes[0].limit.dry_run",
            "dry run is local-only",
        ),
        (
            "[routes.limit]\nrate = 1\nbackend = \"redis\"\nlease = 0",
            11,
            "routes[0].limit.lease",
            "must be from 1 to 1000, got 0",
        ),
        (
            "[routes.limit]\nrate = 1\nbackend = \"redis\"\nlease = 1001",
            11,
            "routes[0].limit.lease",
            "must be from 1 to 1000, got 1001",
        ),
        (
            "[routes.limit]\nrate = 1\nbackend = \"redis\"\nlease = 1.5",
            11,
            "routes[0].limit.lease",
            "invalid type: floating point",
        ),
        (
            "[routes.limit]\nrate = 1\nbackend = \"redis\"\nexpected_instances = 0",
            11,
            "routes[0].limit.expected_instances",
            "must be from 1 to 10000, got 0",
        ),
        (
            "[routes.limit]\nrate = 1\nbackend = \"redis\"\nexpected_instances = 10001",
            11,
            "routes[0].limit.expected_instances",
            "must be from 1 to 10000, got 10001",
        ),
        (
            "[routes.limit]\nrate = 1\nbackend = \"redis\"\non_redis_error = \"retry\"",
            11,
            "routes[0].limit.on_redis_error",
            "unknown on_redis_error \"retry\": expected \"local\", \"allow\" or \"deny\"",
        ),
        (
            "[routes.limit]\nrate = 1\nbackend = \"redis\"\nleases = 2",
            11,
            "routes[0].limit.leases",
            "unknown field `leases`",
        ),
    ];
    for (extra, line, key, expected) in cases {
        let (l, _, k, message) = fail(&with_redis(extra, REDIS));
        assert_eq!((l, k.as_str()), (*line, *key), "{extra}: {message}");
        assert!(message.contains(expected), "{extra}: {message}");
    }
    // A dry run with the local backend, written out, is still fine.
    parse(&with_redis(
        "limit = { rate = 1, backend = \"local\", dry_run = true }",
        REDIS,
    ))
    .expect("local dry run parses");
    parse(&with_redis(
        "limit = { rate = 1, backend = \"redis\", dry_run = false }",
        REDIS,
    ))
    .expect("dry_run = false goes with redis");
}

#[test]
fn redis_backend_needs_a_redis_section() {
    for (extra, line) in [
        ("[routes.limit]\nrate = 1\nbackend = \"redis\"", 10),
        ("limit = { rate = 1, backend = \"redis\", lease = 4 }", 8),
    ] {
        let (l, column, k, message) = fail(&with_route_extra(extra));
        assert_eq!(
            (l, k.as_str()),
            (line, "routes[0].limit.backend"),
            "{message}"
        );
        assert!(message.contains("[redis] section with `url`"), "{message}");
        // At the value, where the other errors point too.
        let at = extra
            .lines()
            .last()
            .and_then(|l| l.find("\"redis\""))
            .expect("value");
        assert_eq!(column, at + 1, "{message}");
    }
    // The second route is the one blamed.
    let src = format!(
        "{MINIMAL}\n[[routes]]\nname = \"global\"\npath_prefix = \"/g\"\nupstream = \"api\"\nlimit = {{ rate = 1, backend = \"redis\" }}\n"
    );
    let (l, _, k, _) = fail(&src);
    assert_eq!((l, k.as_str()), (13, "routes[1].limit.backend"));
}
