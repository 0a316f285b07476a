//! Loading a config: reading the file, parsing the TOML, and the error
//! every later step reports through [`Ctx::invalid`].

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::DeTable;

use crate::config::locate::{
    display_key, key_path_at, key_path_of, key_segment, line_column, quoted_field,
};
use crate::config::model::Config;
use crate::config::raw::RawConfig;

/// A config that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `path:line:column: key `dotted.key`: message`
    #[error("{path}:{line}:{column}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&src, path)
    }

    /// Validates config text. `path` names the file in messages, and relative
    /// file paths in it (TLS certificates, keys and CAs, secret files) are
    /// taken from its directory. TLS files are not opened here; secrets
    /// (`admin.token_file` / `token_env`, `[redis] password_file` /
    /// `password_env`) are read here, so a reload reads them again.
    pub fn parse(src: &str, path: &Path) -> Result<Config, ConfigError> {
        let (root, errors) = DeTable::parse_recoverable(src);
        let ctx = Ctx {
            src,
            path,
            root: root.get_ref(),
        };
        // The first syntax error is the one `toml::from_str` would report.
        if let Some(err) = errors.first() {
            return Err(ctx.toml_error(err));
        }
        let raw = RawConfig::deserialize(toml::de::Deserializer::from(root.clone()))
            .map_err(|err| ctx.toml_error(&err))?;
        ctx.config(raw)
    }
}

pub(crate) type Checked<T> = Result<T, ConfigError>;

/// What every error needs: the text (to turn byte offsets into lines), the
/// path, and the document as parsed (to turn byte offsets into keys).
pub(crate) struct Ctx<'a> {
    pub(crate) src: &'a str,
    pub(crate) path: &'a Path,
    pub(crate) root: &'a DeTable<'a>,
}

impl Ctx<'_> {
    /// An error about the value at `span`: its dotted key is found from the
    /// span in the parsed document ([`Ctx::key_at`]), so checkers pass the
    /// value and never spell a key.
    pub(crate) fn invalid(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let key = self.key_at(&span);
        self.invalid_key(span, &key, message)
    }

    /// The dotted key of the value (or key) at `span`, as errors show it.
    pub(crate) fn key_at(&self, span: &Range<usize>) -> String {
        display_key(&self.path_at(span))
    }

    /// The value spanning exactly `span` (a whole array, not its first
    /// item), else whatever the document has at its start.
    fn path_at(&self, span: &Range<usize>) -> Vec<String> {
        key_path_of(self.root, span).unwrap_or_else(|| key_path_at(self.src, self.root, span.start))
    }

    /// The key `field` of the table holding the value at `span`: for a key
    /// that is missing but required by the one written at `span`.
    pub(crate) fn sibling_key(&self, span: &Range<usize>, field: &str) -> String {
        let mut path = self.path_at(span);
        path.pop();
        path.push(key_segment(field));
        display_key(&path)
    }

    /// An error whose key is not the one at `span`: a key that is missing
    /// (it has no span; the error points at its table or the file's start),
    /// or one that is required because of another key written at `span`.
    pub(crate) fn invalid_key(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = line_column(self.src, span.start);
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// A syntax, type, unknown-key or missing-key error from the TOML layer. It only
    /// knows a byte span, so the key is found in the parsed document at that span.
    pub(crate) fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let message = err.message();
        let offset = err.span().map_or(0, |span| span.start);
        let mut key = key_path_at(self.src, self.root, offset);
        // For a missing key toml points at the table that lacks it, so the key is
        // appended; for an unknown key it points at the key itself, which the path
        // then already ends with (unless the span was less precise than usual).
        if let Some(field) = quoted_field(message, "missing field ") {
            key.push(key_segment(field));
        } else if let Some(field) = quoted_field(message, "unknown field ") {
            let field = key_segment(field);
            if key.last() != Some(&field) {
                key.push(field);
            }
        }
        self.invalid_key(offset..offset, &display_key(&key), message)
    }
}
