//! `[server]`, `[server.tls]`, `[admin]` and `[log]`.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use crate::config::bounds::{
    MAX_CONNECTIONS, MAX_MAX_HEADER_BYTES, MAX_MAX_HEADERS, MAX_TOKEN_BYTES, MIN_CLIENT_TIMEOUT,
    PLACEHOLDER_REFUSED,
};
use crate::config::defaults::{
    DEFAULT_ADMIN_LISTEN, DEFAULT_CLIENT_BODY_TIMEOUT, DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_LOG_LEVEL,
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADERS,
    DEFAULT_REQUEST_BUFFER_BYTES, DEFAULT_SEND_TIMEOUT, DEFAULT_SERVER_LISTEN,
    DEFAULT_SESSION_CACHE, MAX_BACKLOG, MAX_REQUEST_BUFFER_BYTES, MAX_SESSION_CACHE, MAX_WORKERS,
    MIN_MAX_HEADER_BYTES,
};
use crate::config::load::{Checked, Ctx};
use crate::config::locate::line_column;
use crate::config::model::{AdminConfig, LogConfig, LogFormat, ServerConfig, ServerTls};
use crate::config::raw::{RawAdmin, RawLog, RawServer, RawServerTls};
use crate::config::secret::{REDACTED, Secret, SecretSource};
use crate::config::values::{parse_net, read_secret_file, resolve_path};

impl Ctx<'_> {
    pub(crate) fn server(&self, raw: RawServer) -> Checked<ServerConfig> {
        Ok(ServerConfig {
            listen: raw
                .listen
                .map_or(Ok(DEFAULT_SERVER_LISTEN), |v| self.socket_addr(&v))?,
            header_timeout: raw.header_timeout.map_or(Ok(DEFAULT_HEADER_TIMEOUT), |v| {
                self.duration_at_least(&v, MIN_CLIENT_TIMEOUT)
            })?,
            idle_timeout: raw.idle_timeout.map_or(Ok(DEFAULT_IDLE_TIMEOUT), |v| {
                self.duration_at_least(&v, MIN_CLIENT_TIMEOUT)
            })?,
            backlog: raw
                .backlog
                .map_or(Ok(MAX_BACKLOG), |v| self.between(&v, 1, MAX_BACKLOG))?
                as u32,
            max_header_bytes: raw
                .max_header_bytes
                .map_or(Ok(DEFAULT_MAX_HEADER_BYTES), |v| {
                    self.between(&v, MIN_MAX_HEADER_BYTES, MAX_MAX_HEADER_BYTES)
                })?,
            max_headers: raw.max_headers.map_or(Ok(DEFAULT_MAX_HEADERS), |v| {
                self.between(&v, 1, MAX_MAX_HEADERS)
            })?,
            max_connections: raw
                .max_connections
                .map_or(Ok(DEFAULT_MAX_CONNECTIONS), |v| {
                    self.between(&v, 1, MAX_CONNECTIONS)
                })?,
            max_body_bytes: raw
                .max_body_bytes
                .map_or(Ok(DEFAULT_MAX_BODY_BYTES), |v| self.at_least(&v, 0))?
                as u64,
            request_buffer_bytes: raw
                .request_buffer_bytes
                .map_or(Ok(DEFAULT_REQUEST_BUFFER_BYTES), |v| {
                    self.between(&v, 0, MAX_REQUEST_BUFFER_BYTES)
                })?,
            client_body_timeout: raw
                .client_body_timeout
                .map_or(Ok(DEFAULT_CLIENT_BODY_TIMEOUT), |v| {
                    self.duration_at_least(&v, MIN_CLIENT_TIMEOUT)
                })?,
            send_timeout: raw.send_timeout.map_or(Ok(DEFAULT_SEND_TIMEOUT), |v| {
                self.duration_at_least(&v, MIN_CLIENT_TIMEOUT)
            })?,
            workers: raw
                .workers
                .map(|v| self.between(&v, 1, MAX_WORKERS))
                .transpose()?,
            drain_timeout: raw
                .drain_timeout
                .map_or(Ok(DEFAULT_DRAIN_TIMEOUT), |v| self.duration(&v))?,
            tls: raw.tls.map(|v| self.server_tls(&v)).transpose()?,
            shutdown_delay: raw
                .shutdown_delay
                .map_or(Ok(Duration::ZERO), |v| self.duration(&v))?,
            trusted_proxies: raw
                .trusted_proxies
                .map_or(Ok(Vec::new()), |v| self.trusted_proxies(&v))?,
        })
    }

    pub(crate) fn admin(&self, raw: RawAdmin) -> Checked<AdminConfig> {
        Ok(AdminConfig {
            listen: raw
                .listen
                .as_ref()
                .map_or(Ok(DEFAULT_ADMIN_LISTEN), |v| self.socket_addr(v))?,
            token: self.admin_token(&raw)?,
        })
    }

    /// The two listeners cannot bind the same address. Port 0 means "any free
    /// port", so two port-0 listeners do not clash.
    pub(crate) fn distinct_listeners(
        &self,
        server: &ServerConfig,
        admin: &AdminConfig,
        server_span: Option<Range<usize>>,
        admin_span: Option<Range<usize>>,
    ) -> Checked<()> {
        if server.listen != admin.listen || server.listen.port() == 0 {
            return Ok(());
        }
        // Blame the one that was written; both cannot be defaults, they differ.
        let message =
            |other: &str| format!("{} is also {other}; the two must differ", admin.listen);
        Err(match (admin_span, server_span) {
            (Some(span), _) => self.invalid(span, message("server.listen")),
            (None, Some(span)) => self.invalid(span, message("admin.listen")),
            // Both defaults, which differ: no span to find the key by.
            (None, None) => self.invalid_key(0..0, "admin.listen", message("server.listen")),
        })
    }

    pub(crate) fn log(&self, raw: RawLog) -> Checked<LogConfig> {
        Ok(LogConfig {
            format: raw
                .format
                .map_or(Ok(LogFormat::Text), |v| self.log_format(&v))?,
            level: raw
                .level
                .map_or(Ok(DEFAULT_LOG_LEVEL.to_string()), |v| self.log_level(&v))?,
            access_log: raw.access_log.unwrap_or(true),
        })
    }

    pub(crate) fn server_tls(&self, raw: &RawServerTls) -> Checked<ServerTls> {
        Ok(ServerTls {
            cert: self.file_path(&raw.cert)?,
            key: self.file_path(&raw.key)?,
            handshake_timeout: raw
                .handshake_timeout
                .as_ref()
                .map_or(Ok(DEFAULT_HANDSHAKE_TIMEOUT), |v| {
                    self.duration_at_least(v, MIN_CLIENT_TIMEOUT)
                })?,
            session_tickets: raw.session_tickets.unwrap_or(true),
            session_cache: raw
                .session_cache
                .as_ref()
                .map_or(Ok(DEFAULT_SESSION_CACHE), |v| {
                    self.between(v, 0, MAX_SESSION_CACHE)
                })?,
        })
    }

    pub(crate) fn trusted_proxies(&self, raw: &[Spanned<String>]) -> Checked<Vec<IpNet>> {
        raw.iter()
            .map(|v| {
                parse_net(v.get_ref()).map_err(|why| {
                    self.invalid(
                        v.span(),
                        format!("invalid proxy address {:?}: {why}", v.get_ref()),
                    )
                })
            })
            .collect()
    }

    // --- single values ------------------------------------------------------

    pub(crate) fn log_format(&self, v: &Spanned<String>) -> Checked<LogFormat> {
        match v.get_ref().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(self.invalid(
                v.span(),
                format!("unknown log format {other:?}: expected \"text\" or \"json\""),
            )),
        }
    }

    /// Parsed here so a typo fails at startup instead of silently logging nothing.
    pub(crate) fn log_level(&self, v: &Spanned<String>) -> Checked<String> {
        let level = v.get_ref();
        if level.trim().is_empty() {
            return Err(self.invalid(v.span(), "must not be empty (e.g. \"info\")"));
        }
        tracing_subscriber::EnvFilter::builder()
            .parse(level)
            .map_err(|err| {
                self.invalid(
                    v.span(),
                    format!("invalid filter directive {level:?}: {err}"),
                )
            })?;
        Ok(level.clone())
    }

    /// `admin.token`, `admin.token_file` or `admin.token_env`, at most one.
    pub(crate) fn admin_token(&self, raw: &RawAdmin) -> Checked<Option<Secret>> {
        let read = self.secret_from("token", raw.token_file.as_ref(), raw.token_env.as_ref())?;
        let (token, span) = match (&raw.token, read) {
            (None, None) => return Ok(None),
            (Some(v), None) => (
                Secret::new(v.get_ref().clone(), SecretSource::Inline),
                v.span(),
            ),
            (None, Some(read)) => read,
            (Some(inline), Some((_, span))) => {
                let (line, _) = line_column(self.src, inline.span().start);
                return Err(self.invalid(
                    span,
                    format!(
                        "admin.token is already set (line {line}); give the token one way only"
                    ),
                ));
            }
        };
        self.token(span, token.expose())?;
        Ok(Some(token))
    }

    /// A bearer token: visible ASCII without spaces (RFC 6750 b64token,
    /// loosely), 1 to `MAX_TOKEN_BYTES` bytes. The messages never show it.
    pub(crate) fn token(&self, span: Range<usize>, token: &str) -> Checked<()> {
        if token.is_empty()
            || token.len() > MAX_TOKEN_BYTES
            || !token.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(self.invalid(
                span,
                format!("must be 1 to {MAX_TOKEN_BYTES} bytes of visible ASCII without spaces"),
            ));
        }
        if token == REDACTED {
            return Err(self.invalid(span, PLACEHOLDER_REFUSED));
        }
        Ok(())
    }

    /// A secret from `{name}_file` or `{name}_env` (at most one): its value
    /// and the span of the key it came from.
    pub(crate) fn secret_from(
        &self,
        name: &str,
        file: Option<&Spanned<String>>,
        env: Option<&Spanned<String>>,
    ) -> Checked<Option<(Secret, Range<usize>)>> {
        match (file, env) {
            (None, None) => Ok(None),
            (Some(f), Some(e)) => {
                let (first, second) = if f.span().start < e.span().start {
                    (f.span(), e.span())
                } else {
                    (e.span(), f.span())
                };
                let (line, _) = line_column(self.src, first.start);
                Err(self.invalid(
                    second,
                    format!(
                        "{} is already set (line {line}); give the {name} one way only",
                        self.key_at(&first)
                    ),
                ))
            }
            (Some(v), None) => {
                let path = resolve_path(self.path, Path::new(v.get_ref()));
                if v.get_ref().trim().is_empty() || v.get_ref().contains('\0') {
                    return Err(self.invalid(v.span(), "must be the path of a file"));
                }
                let value = read_secret_file(&path).map_err(|why| self.invalid(v.span(), why))?;
                Ok(Some((
                    Secret::new(value, SecretSource::File(path)),
                    v.span(),
                )))
            }
            (None, Some(v)) => {
                let var = v.get_ref();
                if var.is_empty() || var.contains(['=', '\0']) {
                    return Err(
                        self.invalid(v.span(), "must be the name of an environment variable")
                    );
                }
                let value = match std::env::var(var) {
                    Ok(value) if !value.is_empty() => value,
                    Ok(_) => {
                        return Err(self.invalid(v.span(), format!("${var} is empty")));
                    }
                    Err(std::env::VarError::NotPresent) => {
                        return Err(self.invalid(v.span(), format!("${var} is not set")));
                    }
                    Err(std::env::VarError::NotUnicode(_)) => {
                        return Err(self.invalid(v.span(), format!("${var} is not valid UTF-8")));
                    }
                };
                Ok(Some((
                    Secret::new(value, SecretSource::Env(var.clone())),
                    v.span(),
                )))
            }
        }
    }
}
