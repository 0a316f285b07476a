//! Errors as a whole: how they are shown, that broken input never panics,
//! that secrets stay out of them. Each rejected config, with the line,
//! column, key and message it gets, is a file in `tests/config/invalid/`
//! (driven by `tests/it/config/invalid.rs`).

use super::*;

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
fn error_display_names_file_line_column_and_key() {
    let err = parse(&with_route_extra("[routes.limit]\nrate = 0")).expect_err("rate 0");
    let shown = err.to_string();
    assert!(
        shown.starts_with("test.toml:9:8: key `routes[0].limit.rate`: "),
        "{shown}"
    );
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

#[test]
fn redis_url_errors_do_not_show_the_password() {
    let (.., message) = fail(&with_redis(
        "",
        "url = \"redis://user:hunter2@0.0.0.0:6379\"",
    ));
    assert!(!message.contains("hunter2"), "{message}");
}
