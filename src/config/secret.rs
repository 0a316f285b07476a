//! Secrets held by the config (the admin token, the Redis password): the
//! value, and where it came from. A [`Secret`] never prints its value — not
//! in `Debug`, not in `sluice check`, not in a log line or an error — so the
//! only way to it is [`Secret::expose`], at the one place that sends it.

use std::fmt;
use std::path::PathBuf;

/// What `sluice check` and `Debug` show in place of a secret's value. The
/// loader refuses it as a value, so a printed config fed back fails loudly at
/// the key instead of running with a placeholder for a password.
pub const REDACTED: &str = "<redacted>";

/// A secret value and its source. Two secrets are equal when both the value
/// and the source are, so a reload notices a changed file.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    source: SecretSource,
}

/// Where a secret was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Written in the config file itself.
    Inline,
    /// Read from this file when the config was loaded (or reloaded), the
    /// trailing newline trimmed.
    File(PathBuf),
    /// Read from this environment variable when the config was loaded.
    Env(String),
}

impl Secret {
    pub fn new(value: impl Into<String>, source: SecretSource) -> Secret {
        Secret {
            value: value.into(),
            source,
        }
    }

    /// The value itself: only for sending it where it belongs.
    pub fn expose(&self) -> &str {
        &self.value
    }

    pub fn source(&self) -> &SecretSource {
        &self.source
    }
}

/// A secret written inline (tests and programs building a `Config`).
impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret::new(value, SecretSource::Inline)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret::new(value, SecretSource::Inline)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            SecretSource::Inline => write!(f, "Secret({REDACTED})"),
            SecretSource::File(path) => {
                write!(f, "Secret({REDACTED}, from file {})", path.display())
            }
            SecretSource::Env(name) => write!(f, "Secret({REDACTED}, from ${name})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        for secret in [
            Secret::from("hunter2"),
            Secret::new("hunter2", SecretSource::File("/run/secrets/x".into())),
            Secret::new("hunter2", SecretSource::Env("X".into())),
        ] {
            let shown = format!("{secret:?} {:?}", Some(&secret));
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains(REDACTED), "{shown}");
        }
    }
}
