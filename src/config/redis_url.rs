//! `[redis] url`: checked as the Redis client will read it, without any I/O,
//! and shown without its password.

use redis::Client;

use crate::config::secret::REDACTED;

/// What a URL for `[redis]` looks like, for error messages.
const URL_SHAPE: &str =
    "redis://[user[:password]@]host[:port][/db], redis+unix:///path or unix:///path";

/// Checks a `[redis] url` as the store's `RedisLink::new` will, without any I/O, so
/// the config loader can refuse a bad one at load time. The message never
/// repeats the URL, which may hold a password.
pub fn validate_url(url: &str) -> Result<(), String> {
    parse_url(url).map(|_| ())
}

/// The password a `[redis] url` holds, percent-decoded as the client sends it.
pub fn url_password(url: &str) -> Option<String> {
    let client = Client::open(url).ok()?;
    client
        .get_connection_info()
        .redis_settings()
        .password()
        .map(str::to_string)
}

/// The URL with its password (if any) replaced by [`REDACTED`], for
/// `sluice check` and `Debug`. A URL the client cannot read is shown only
/// by its scheme.
pub fn redact_url(url: &str) -> String {
    match redis::parse_redis_url(url) {
        Some(mut parsed) => {
            if parsed.password().is_some() && parsed.set_password(Some(REDACTED)).is_err() {
                return format!("{}://{REDACTED}", parsed.scheme());
            }
            parsed.to_string()
        }
        // Unparsable text may hold anything.
        None if url.contains('@') => REDACTED.to_string(),
        None => url.to_string(),
    }
}

pub(crate) fn parse_url(url: &str) -> Result<Client, String> {
    if let Some(parsed) = redis::parse_redis_url(url)
        && matches!(parsed.scheme(), "rediss" | "valkeys")
    {
        return Err("TLS to Redis is not supported; use a local TLS tunnel or redis://".into());
    }
    Client::open(url).map_err(|err| {
        // The crate's text ("Invalid database number - InvalidClientConfig")
        // names the fault but never the URL; the kind adds nothing here.
        let why = err.to_string();
        let why = why.strip_suffix(" - InvalidClientConfig").unwrap_or(&why);
        format!("invalid Redis URL: {why}; expected {URL_SHAPE}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_for_plain_tcp_and_unix_sockets_pass() {
        for url in [
            "redis://127.0.0.1",
            "redis://127.0.0.1:6380/2",
            "redis://:secret@redis.internal:6379",
            "redis://user:secret@[::1]:6379",
            "unix:///run/redis/redis.sock",
        ] {
            assert_eq!(validate_url(url), Ok(()), "{url}");
        }
    }

    #[test]
    fn tls_urls_are_refused_saying_why() {
        for url in ["rediss://127.0.0.1:6379", "valkeys://cache:6379"] {
            let err = validate_url(url).unwrap_err();
            assert!(err.contains("TLS"), "{err}");
            assert!(err.contains("redis://"), "{err}");
        }
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_a_password() {
        for url in [
            "",
            "127.0.0.1:6379",
            "http://user:hunter2@127.0.0.1",
            "redis://user:hunter2@127.0.0.1/notadb",
            "redis://user:hunter2@0.0.0.0:6379",
            "redis://user:hunter2@127.0.0.1/?protocol=9",
        ] {
            let err = validate_url(url).unwrap_err();
            assert!(err.contains("redis://"), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{url}: {err}");
        }
    }

    #[test]
    fn urls_are_shown_without_their_password() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "redis://user:hunter2@cache:6379/1",
                "redis://user:%3Credacted%3E@cache:6379/1",
            ),
            ("redis://:hunter2@cache", "redis://:%3Credacted%3E@cache"),
            ("unix:///run/redis.sock", "unix:///run/redis.sock"),
            ("not a url hunter2@x", REDACTED),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        assert_eq!(url_password("redis://u:p%40ss@h").as_deref(), Some("p@ss"));
        assert_eq!(url_password("redis://h"), None);
    }
}
