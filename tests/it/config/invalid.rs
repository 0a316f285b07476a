//! Rejected configs as fixture files: `tests/config/invalid/*.toml`, each
//! with the exact error on its first line (see `tests/config/README.md`).

use std::path::{Path, PathBuf};

use sluice::config::{Config, ConfigError};

/// The rejected configs in `tests/config/invalid/`, sorted by name.
fn invalid_fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

/// The error a fixture expects: its first line, `# LINE:COLUMN: key `KEY`:
/// MESSAGE`, is the error as shown after the file's path.
fn expected_error(path: &Path) -> String {
    let src = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let first = src.lines().next().unwrap_or_default();
    let expected = first.strip_prefix("# ").unwrap_or_else(|| {
        panic!(
            "{}: first line must be `# LINE:COLUMN: key ...`",
            path.display()
        )
    });
    format!("{}:{expected}", path.display())
}

/// Every config in `tests/config/invalid/` is rejected by the loader with
/// exactly the file:line:column, key and message on its first line.
#[test]
fn invalid_fixtures_are_rejected_as_their_first_line_says() {
    let files = invalid_fixtures();
    assert!(files.len() >= 280, "only {} fixtures", files.len());
    let mut wrong = Vec::new();
    for path in &files {
        let expected = expected_error(path);
        let got = match Config::load(path) {
            Err(err @ ConfigError::Invalid { .. }) => err.to_string(),
            other => format!("{other:?}"),
        };
        if got != expected {
            wrong.push(format!(
                "{}\n  expected {expected}\n  got      {got}",
                path.display()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {}:\n{}",
        wrong.len(),
        files.len(),
        wrong.join("\n")
    );
}

/// A sample of the fixtures through `sluice check`, as a user meets them:
/// the same line on stderr and exit status 1.
#[test]
fn invalid_fixtures_fail_sluice_check() {
    for path in invalid_fixtures().iter().step_by(23) {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["check", "--config"])
            .arg(path)
            .output()
            .unwrap_or_else(|e| panic!("run sluice check: {e}"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{}: {stderr}",
            path.display()
        );
        assert!(
            stderr.contains(&expected_error(path)),
            "{}: {stderr}",
            path.display()
        );
        assert!(output.stdout.is_empty(), "{}", path.display());
    }
}
