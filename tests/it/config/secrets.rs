//! Secrets: the admin token and the Redis password, read from files and
//! the environment, never shown in errors, `Debug` or `sluice check`.

use std::path::{Path, PathBuf};

use sluice::config::{Config, ConfigError};

use super::*;

/// Parses `src`, expects an `Invalid` error and checks the line, the key and
/// that the rendered message leads with the file name and line.
#[track_caller]
fn assert_error(src: &str, line: usize, key: &str) -> String {
    let err = Config::parse(src, Path::new(FILE)).expect_err("config should be rejected");
    let shown = err.to_string();
    match &err {
        ConfigError::Invalid {
            path,
            line: l,
            key: k,
            ..
        } => {
            assert_eq!(path, Path::new(FILE));
            assert_eq!((*l, k.as_str()), (line, key), "{shown}");
        }
        other => panic!("expected ConfigError::Invalid, got {other:?}"),
    }
    assert!(shown.contains("flash-sale.toml"), "{shown}");
    let prefix = format!("{FILE}:{line}:");
    assert!(shown.starts_with(&prefix), "{shown}");
    assert!(shown.contains(&format!("key `{key}`: ")), "{shown}");
    shown
}

/// BASE with `admin` lines after `[admin]` (line 2 on) and a `[redis]`
/// section (after BASE) with `redis` lines.
fn with_secrets(admin: &str, redis: &str) -> String {
    format!("[admin]\n{admin}\n{BASE}\n[redis]\n{redis}\n")
}

fn secret_file(name: &str, content: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("config-secrets");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

#[test]
fn secrets_are_read_from_files_trimmed_and_never_shown() {
    let token = secret_file("token", "t0ken-from-file\r\n");
    let password = secret_file("password", "pass word\n");
    let src = with_secrets(
        &format!("token_file = \"{}\"", token.display()),
        &format!(
            "url = \"redis://127.0.0.1:6379\"\npassword_file = \"{}\"",
            password.display()
        ),
    );
    let cfg = Config::parse(&src, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.admin.token.as_ref().unwrap().expose(),
        "t0ken-from-file"
    );
    let redis = cfg.redis.as_ref().unwrap();
    assert_eq!(redis.password.as_ref().unwrap().expose(), "pass word");
    let shown = format!("{cfg:?}\n{}", cfg.to_toml());
    assert!(!shown.contains("t0ken-from-file"), "{shown}");
    assert!(!shown.contains("pass word"), "{shown}");

    // Inline secrets are redacted in Debug too (the URL's password as well).
    let src = with_secrets(
        "token = \"inline-t0ken\"",
        "url = \"redis://u:inline-pw@127.0.0.1:6379\"",
    );
    let cfg = Config::parse(&src, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"));
    let shown = format!("{cfg:?}\n{:#?}\n{}", cfg, cfg.to_toml());
    assert!(!shown.contains("inline-t0ken"), "{shown}");
    assert!(!shown.contains("inline-pw"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
}

#[test]
fn secret_errors_name_file_line_key_and_never_the_secret() {
    let token = secret_file("token-ok", "t0ken\n");
    let empty = secret_file("empty", "\n");
    let spaced = secret_file("spaced", "two words\n");
    let missing = Path::new(env!("CARGO_TARGET_TMPDIR")).join("config-secrets/missing");
    let url = "url = \"redis://127.0.0.1:6379\"";
    let long = "x".repeat(257);
    let cases: Vec<(String, String, usize, &str, String)> = vec![
        (
            format!("token = \"a\"\ntoken_file = \"{}\"", token.display()),
            url.into(),
            3,
            "admin.token_file",
            "admin.token is already set (line 2)".into(),
        ),
        (
            format!("token_env = \"HOME\"\ntoken_file = \"{}\"", token.display()),
            url.into(),
            3,
            "admin.token_file",
            "admin.token_env is already set (line 2)".into(),
        ),
        (
            format!("token_file = \"{}\"", missing.display()),
            url.into(),
            2,
            "admin.token_file",
            format!("cannot read {}", missing.display()),
        ),
        (
            "token_file = \"/dev/null\"".into(),
            url.into(),
            2,
            "admin.token_file",
            "/dev/null is not a regular file".into(),
        ),
        (
            format!("token_file = \"{}\"", empty.display()),
            url.into(),
            2,
            "admin.token_file",
            "is empty".into(),
        ),
        (
            format!("token_file = \"{}\"", spaced.display()),
            url.into(),
            2,
            "admin.token_file",
            "must be 1 to 256 bytes of visible ASCII without spaces".into(),
        ),
        (
            format!("token = \"{long}\""),
            url.into(),
            2,
            "admin.token",
            "must be 1 to 256 bytes".into(),
        ),
        (
            "token = \"<redacted>\"".into(),
            url.into(),
            2,
            "admin.token",
            "is the placeholder `sluice check` prints".into(),
        ),
        (
            "token_env = \"SLUICE_TEST_SURELY_UNSET_VARIABLE\"".into(),
            url.into(),
            2,
            "admin.token_env",
            "$SLUICE_TEST_SURELY_UNSET_VARIABLE is not set".into(),
        ),
        (
            "listen = \"127.0.0.1:9090\"".into(),
            format!(
                "url = \"redis://:in-url@127.0.0.1:6379\"\npassword_file = \"{}\"",
                token.display()
            ),
            28,
            "redis.password_file",
            "the url already holds a password".into(),
        ),
        (
            "listen = \"127.0.0.1:9090\"".into(),
            format!(
                "{url}\npassword_file = \"{}\"\npassword_env = \"HOME\"",
                token.display()
            ),
            29,
            "redis.password_env",
            "redis.password_file is already set (line 28)".into(),
        ),
        (
            "listen = \"127.0.0.1:9090\"".into(),
            "url = \"redis://:%3Credacted%3E@127.0.0.1:6379\"".into(),
            27,
            "redis.url",
            "is the placeholder".into(),
        ),
    ];
    for (admin, redis, line, key, message) in cases {
        let src = with_secrets(&admin, &redis);
        let shown = assert_error(&src, line, key);
        assert!(shown.contains(&message), "{shown}");
        for secret in ["t0ken", "two words", "in-url", &long] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}
