//! Config parsing: any text gives `Ok` or a `ConfigError::Invalid` that names
//! `fuzz.toml` and a line and column inside the text; never a panic. A config
//! that parses renders (`to_toml`, what `sluice check --print` shows) to text
//! that parses back to the same config and renders to itself.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sluice::Config;
use sluice::config::ConfigError;

fuzz_target!(|data: &[u8]| {
    // Lossy rather than rejecting invalid UTF-8: every input exercises the parser.
    let text = String::from_utf8_lossy(data);
    check(&text);
});

fn check(text: &str) {
    let path = Path::new("fuzz.toml");
    match Config::parse(text, path) {
        Err(err) => {
            let shown = err.to_string();
            match err {
                ConfigError::Invalid { line, column, .. } => {
                    let prefix = format!("fuzz.toml:{line}:{column}: key `");
                    assert!(shown.starts_with(&prefix), "{shown:?} lacks {prefix:?}");
                    let lines = text.bytes().filter(|&b| b == b'\n').count() + 1;
                    assert!(
                        (1..=lines).contains(&line),
                        "line {line} of {lines}: {shown}"
                    );
                    assert!(column >= 1, "column {column}: {shown}");
                }
                ConfigError::Io { .. } => panic!("parse never reads a file, yet: {shown}"),
            }
        }
        Ok(cfg) => {
            // Secrets are rendered as a placeholder that the loader refuses
            // (and files or variables are read again): such a config does
            // not round-trip by design.
            let inline_secret = cfg.admin.token.is_some()
                || cfg
                    .redis
                    .as_ref()
                    .is_some_and(|r| r.password.is_some() || r.url.contains('@'));
            let rendered = cfg.to_toml();
            if inline_secret {
                return;
            }
            let again = Config::parse(&rendered, path).unwrap_or_else(|e| {
                panic!("rendered config does not parse: {e}\n--- input\n{text}\n--- rendered\n{rendered}")
            });
            assert!(
                again == cfg,
                "round trip changed the config\n--- input\n{text}\n--- rendered\n{rendered}\n--- first\n{cfg:#?}\n--- again\n{again:#?}"
            );
            assert_eq!(again.to_toml(), rendered, "rendering is not a fixed point");
        }
    }
}
