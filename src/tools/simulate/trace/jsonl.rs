//! JSON-lines traces: one object a line, `{"t": 0.25, "path": "/x", ...}`.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::time::{float_seconds, parse_timestamp};
use super::{Fields, NANOS_PER_SEC};

#[derive(Deserialize)]
struct JsonLine<'a> {
    #[serde(alias = "t", alias = "ts", alias = "time")]
    timestamp: Option<JsonTime<'a>>,
    #[serde(borrow)]
    path: Option<Cow<'a, str>>,
    #[serde(borrow)]
    key: Option<JsonText<'a>>,
    #[serde(borrow)]
    class: Option<Cow<'a, str>>,
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    host: Option<Cow<'a, str>>,
}

/// A timestamp: seconds as a number, or a string (decimal seconds or RFC 3339).
enum JsonTime<'a> {
    Seconds(f64),
    Whole(u64),
    Text(Cow<'a, str>),
}

impl<'de: 'a, 'a> Deserialize<'de> for JsonTime<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonTime<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("seconds as a number or a string")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(JsonTime::Whole(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(JsonTime::Whole)
                    .map_err(|_| E::custom("a negative timestamp"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(JsonTime::Seconds(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(JsonTime::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(JsonTime::Text(Cow::Owned(v.to_string())))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A key: a string or a number (taken as its decimal text).
struct JsonText<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for JsonText<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonText<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(JsonText(Cow::Owned(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(JsonText(Cow::Owned(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(JsonText(Cow::Owned(v.to_string())))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(JsonText(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(JsonText(Cow::Owned(v.to_string())))
            }
        }
        deserializer.deserialize_any(V)
    }
}

pub(super) fn parse_json_line(text: &str) -> Result<Fields<'_>, String> {
    let parsed: JsonLine<'_> = serde_json::from_str(text).map_err(|err| {
        let message = err.to_string();
        let message = message
            .rsplit_once(" at line ")
            .map_or(message.as_str(), |(m, _)| m);
        format!("invalid JSON at column {}: {message}", err.column())
    })?;
    let at = match parsed.timestamp {
        None => return Err("no `timestamp` (or `t`, `ts`, `time`) field".into()),
        Some(JsonTime::Whole(secs)) => secs
            .checked_mul(NANOS_PER_SEC)
            .ok_or_else(|| format!("timestamp {secs} is out of range"))?,
        Some(JsonTime::Seconds(secs)) => float_seconds(secs)?,
        Some(JsonTime::Text(text)) => parse_timestamp(&text)?,
    };
    Ok(Fields {
        at,
        coarse: false,
        path: parsed.path.ok_or("no `path` field")?,
        key: parsed.key.map(|JsonText(key)| match key {
            Cow::Borrowed(k) => Cow::Borrowed(k.as_bytes()),
            Cow::Owned(k) => Cow::Owned(k.into_bytes()),
        }),
        class: parsed.class,
        method: parsed.method,
        host: parsed.host,
    })
}
