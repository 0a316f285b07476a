//! Request traces: CSV, JSON lines, and NGINX access logs ("combined", with
//! `[time_local]` or with `$msec` as the first field), read into one compact
//! in-memory form sorted by arrival time.
//!
//! Each request keeps its arrival time (nanoseconds after the trace's first
//! request), its path (without the query), method, host, optional client key
//! (hashed) and optional class name. Paths live in one string arena and
//! methods, hosts and class names are interned, so a record is 32 bytes and
//! two million requests take about 64 MiB plus their paths.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use http::Method;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The layout of a trace file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceFormat {
    /// Decide from the first line: `{` is JSON lines, an NGINX log line is
    /// nginx, anything else CSV.
    Auto,
    /// `timestamp,path[,key[,class[,method[,host]]]]`, or any order under a
    /// header line naming the columns.
    Csv,
    /// One JSON object a line: `{"t": 0.25, "path": "/x", "key": "..", "class": ".."}`.
    Jsonl,
    /// NGINX "combined" access log, optionally with `$msec` as the first field.
    Nginx,
}

impl fmt::Display for TraceFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TraceFormat::Auto => "auto",
            TraceFormat::Csv => "csv",
            TraceFormat::Jsonl => "jsonl",
            TraceFormat::Nginx => "nginx",
        })
    }
}

/// A trace that could not be read, naming the file and (for a bad line) the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceError {
    pub source: String,
    /// 1-based line number of the bad line, if the error is about one.
    pub line: Option<u64>,
    pub message: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.source, line, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

impl std::error::Error for TraceError {}

/// One request of a trace.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record {
    /// Nanoseconds after the first request (absolute until the trace is finished).
    pub at: u64,
    path_start: u32,
    path_len: u32,
    /// FNV-1a hash of the client key; meaningful only when `has_key`.
    pub key: u64,
    pub has_key: bool,
    /// Index into `Trace::methods`.
    pub method: u8,
    /// Only whole seconds were known (NGINX `[time_local]`): spread over its second.
    coarse: bool,
    /// Index into `Trace::hosts`, 0 for none.
    pub host: u16,
    /// Index into `Trace::classes`, 0 for none.
    pub class: u16,
}

/// A request trace, sorted by arrival time.
#[derive(Debug, Clone)]
pub struct Trace {
    source: String,
    format: TraceFormat,
    records: Vec<Record>,
    paths: String,
    pub(crate) methods: Vec<Method>,
    /// Index 0 is the empty host (none given).
    pub(crate) hosts: Vec<String>,
    /// Index 0 is the empty class (none given).
    pub(crate) classes: Vec<String>,
    skipped: u64,
    first_bad: Option<TraceError>,
}

impl Trace {
    /// Reads a trace file. Malformed lines are an error naming the line, or,
    /// with `skip_bad`, skipped and counted.
    pub fn load(path: &Path, format: TraceFormat, skip_bad: bool) -> Result<Trace, TraceError> {
        let source = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|err| TraceError {
            source: source.clone(),
            line: None,
            message: format!("cannot read: {err}"),
        })?;
        Trace::parse(&bytes, &source, format, skip_bad)
    }

    /// Reads a trace from memory; `source` names it in errors.
    pub fn parse(
        bytes: &[u8],
        source: &str,
        format: TraceFormat,
        skip_bad: bool,
    ) -> Result<Trace, TraceError> {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes); // a UTF-8 BOM
        let format = match format {
            TraceFormat::Auto => detect(bytes),
            other => other,
        };
        let mut builder = Builder::new(source, format, skip_bad);
        match format {
            TraceFormat::Csv | TraceFormat::Auto => parse_csv(bytes, &mut builder)?,
            TraceFormat::Jsonl => parse_lines(bytes, &mut builder, parse_json_line)?,
            TraceFormat::Nginx => parse_lines(bytes, &mut builder, parse_nginx_line)?,
        }
        Ok(builder.finish())
    }

    /// Where the trace came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The format it was read as (never `Auto`).
    pub fn format(&self) -> TraceFormat {
        self.format
    }

    /// Requests in the trace.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Malformed lines skipped (with `skip_bad`).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The first malformed line skipped, if any.
    pub fn first_bad(&self) -> Option<&TraceError> {
        self.first_bad.as_ref()
    }

    /// Time from the first request to the last.
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.records.last().map_or(0, |r| r.at))
    }

    /// Arrival times after the first request, in order (for tests and tools).
    pub fn arrivals(&self) -> impl Iterator<Item = Duration> + '_ {
        self.records.iter().map(|r| Duration::from_nanos(r.at))
    }

    pub(crate) fn records(&self) -> &[Record] {
        &self.records
    }

    pub(crate) fn path(&self, record: &Record) -> &str {
        let start = record.path_start as usize;
        &self.paths[start..start + record.path_len as usize]
    }
}

/// The format of a trace from its first meaningful line.
fn detect(bytes: &[u8]) -> TraceFormat {
    let first = bytes
        .split(|&b| b == b'\n')
        .map(|l| l.trim_ascii())
        .find(|l| !l.is_empty() && !l.starts_with(b"#"));
    match first {
        Some(line) if line.starts_with(b"{") => TraceFormat::Jsonl,
        Some(line) if looks_like_nginx(line) => TraceFormat::Nginx,
        _ => TraceFormat::Csv,
    }
}

fn looks_like_nginx(line: &[u8]) -> bool {
    let text = String::from_utf8_lossy(line);
    text.find(" [")
        .is_some_and(|open| text[open..].contains("] \""))
}

/// A line's parsed fields, before interning.
struct Fields<'a> {
    at: u64,
    coarse: bool,
    path: Cow<'a, str>,
    key: Option<Cow<'a, [u8]>>,
    class: Option<Cow<'a, str>>,
    method: Option<Cow<'a, str>>,
    host: Option<Cow<'a, str>>,
}

struct Builder {
    source: String,
    format: TraceFormat,
    skip_bad: bool,
    records: Vec<Record>,
    paths: String,
    methods: Vec<Method>,
    hosts: Vec<String>,
    host_index: HashMap<String, u16>,
    classes: Vec<String>,
    class_index: HashMap<String, u16>,
    skipped: u64,
    first_bad: Option<TraceError>,
}

impl Builder {
    fn new(source: &str, format: TraceFormat, skip_bad: bool) -> Builder {
        Builder {
            source: source.to_string(),
            format,
            skip_bad,
            records: Vec::new(),
            paths: String::new(),
            methods: vec![Method::GET],
            hosts: vec![String::new()],
            host_index: HashMap::new(),
            classes: vec![String::new()],
            class_index: HashMap::new(),
            skipped: 0,
            first_bad: None,
        }
    }

    fn error(&self, line: Option<u64>, message: String) -> TraceError {
        TraceError {
            source: self.source.clone(),
            line,
            message,
        }
    }

    /// A malformed line: an error, or skipped and counted with `skip_bad`.
    fn bad(&mut self, line: u64, message: String) -> Result<(), TraceError> {
        let error = self.error(Some(line), message);
        if !self.skip_bad {
            return Err(error);
        }
        self.skipped += 1;
        self.first_bad.get_or_insert(error);
        Ok(())
    }

    fn push(&mut self, line: u64, fields: Fields<'_>) -> Result<(), TraceError> {
        let path = fields.path.split('?').next().unwrap_or_default();
        if !path.starts_with('/') {
            return self.bad(
                line,
                format!("path `{}` does not start with '/'", clip(&fields.path)),
            );
        }
        let method = match fields.method.as_deref().filter(|m| !m.is_empty()) {
            None => 0,
            Some(name) => match self.methods.iter().position(|m| m.as_str() == name) {
                Some(index) => index,
                None => match Method::from_bytes(name.as_bytes()) {
                    Ok(method) if self.methods.len() < usize::from(u8::MAX) => {
                        self.methods.push(method);
                        self.methods.len() - 1
                    }
                    Ok(_) => return self.bad(line, "more than 255 distinct methods".into()),
                    Err(_) => return self.bad(line, format!("invalid method `{}`", clip(name))),
                },
            },
        };
        let host = match fields.host.as_deref().filter(|h| !h.is_empty()) {
            None => 0,
            Some(host) => match intern(&mut self.hosts, &mut self.host_index, host) {
                Some(index) => index,
                None => return self.bad(line, "more than 65535 distinct hosts".into()),
            },
        };
        let class = match fields.class.as_deref().filter(|c| !c.is_empty()) {
            None => 0,
            Some(class) => match intern(&mut self.classes, &mut self.class_index, class) {
                Some(index) => index,
                None => return self.bad(line, "more than 65535 distinct classes".into()),
            },
        };
        let key = fields.key.as_deref().filter(|k| !k.is_empty());
        let path_start = self.paths.len();
        if path_start + path.len() > u32::MAX as usize {
            return Err(self.error(Some(line), "paths exceed 4 GiB in total".into()));
        }
        self.paths.push_str(path);
        self.records.push(Record {
            at: fields.at,
            path_start: path_start as u32,
            path_len: path.len() as u32,
            key: key.map_or(0, fnv1a),
            has_key: key.is_some(),
            method: method as u8,
            coarse: fields.coarse,
            host,
            class,
        });
        Ok(())
    }

    /// Sorts by arrival (stable: equal times keep file order), spreads
    /// whole-second times over their second, and makes times relative to
    /// the first request.
    fn finish(mut self) -> Trace {
        if !self.records.is_sorted_by_key(|r| r.at) {
            self.records.sort_by_key(|r| r.at);
        }
        spread_coarse(&mut self.records);
        if let Some(origin) = self.records.first().map(|r| r.at) {
            for record in &mut self.records {
                record.at -= origin;
            }
        }
        Trace {
            source: self.source,
            format: self.format,
            records: self.records,
            paths: self.paths,
            methods: self.methods,
            hosts: self.hosts,
            classes: self.classes,
            skipped: self.skipped,
            first_bad: self.first_bad,
        }
    }
}

fn intern(list: &mut Vec<String>, index: &mut HashMap<String, u16>, value: &str) -> Option<u16> {
    if let Some(&i) = index.get(value) {
        return Some(i);
    }
    let i = u16::try_from(list.len()).ok()?;
    list.push(value.to_string());
    index.insert(value.to_string(), i);
    Some(i)
}

/// `n` requests logged in the same whole second (NGINX `[time_local]`) are
/// spread evenly over it: the i-th at `second + i/n`, in log order. Taking
/// them all at the start of the second would turn every second into a burst.
fn spread_coarse(records: &mut [Record]) {
    let mut i = 0;
    while i < records.len() {
        let at = records[i].at;
        let mut j = i;
        while j < records.len() && records[j].at == at {
            j += 1;
        }
        let coarse: Vec<usize> = (i..j).filter(|&k| records[k].coarse).collect();
        let n = coarse.len() as u64;
        for (rank, &k) in coarse.iter().enumerate() {
            records[k].at = at + rank as u64 * NANOS_PER_SEC / n;
        }
        i = j;
    }
    // Spreading moves records within their second only, so the order of
    // different seconds holds; within a second, exact times may now interleave.
    if !records.is_sorted_by_key(|r| r.at) {
        records.sort_by_key(|r| r.at);
    }
}

/// FNV-1a, 64 bit: a fixed, seedless hash, so a simulation is repeatable.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// At most 60 characters of `text`, for messages.
fn clip(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(60) {
        Some((cut, _)) => Cow::Owned(format!("{}...", &text[..cut])),
        None => Cow::Borrowed(text),
    }
}

/// Decimal seconds ("12", "1700000000.123456") to nanoseconds, exactly
/// (digits past the ninth decimal are dropped); or an RFC 3339 time
/// ("2026-01-31T12:00:00.250Z").
pub(crate) fn parse_timestamp(text: &str) -> Result<u64, String> {
    if let Some(nanos) = parse_decimal_seconds(text) {
        return Ok(nanos);
    }
    if text.len() >= 10 && text.as_bytes()[4] == b'-' {
        let time = humantime::parse_rfc3339_weak(text)
            .map_err(|err| format!("timestamp `{}`: {err}", clip(text)))?;
        let since = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| format!("timestamp `{}` is before 1970", clip(text)))?;
        return u64::try_from(since.as_nanos())
            .map_err(|_| format!("timestamp `{}` is out of range", clip(text)));
    }
    Err(format!(
        "expected a timestamp (seconds, e.g. `12.5`, or RFC 3339), found `{}`",
        clip(text)
    ))
}

fn parse_decimal_seconds(text: &str) -> Option<u64> {
    let (whole, fraction) = match text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text, ""),
    };
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut nanos: u64 = 0;
    for (i, b) in fraction.bytes().take(9).enumerate() {
        nanos += u64::from(b - b'0') * 10u64.pow(8 - i as u32);
    }
    secs.checked_mul(NANOS_PER_SEC)?.checked_add(nanos)
}

/// Seconds as a JSON number to nanoseconds. A JSON number is read as an
/// f64, which holds a Unix time only to about 0.2 us: from 10^6 s up the
/// fraction is rounded to the microsecond (so `1769860800.125` is exact),
/// below that to the nanosecond. Give a string for exact nanoseconds.
fn float_seconds(secs: f64) -> Result<u64, String> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("timestamp {secs} is not a non-negative number"));
    }
    if secs >= 1.8e10 {
        return Err(format!("timestamp {secs} is out of range"));
    }
    let whole = secs.trunc();
    let fraction = secs - whole;
    let fraction_nanos = if secs >= 1e6 {
        (fraction * 1e6).round() as u64 * 1_000
    } else {
        (fraction * 1e9).round() as u64
    };
    Ok(whole as u64 * NANOS_PER_SEC + fraction_nanos)
}

// ---- CSV ----

#[derive(Debug, Clone, Copy)]
struct Columns {
    at: usize,
    path: usize,
    key: Option<usize>,
    class: Option<usize>,
    method: Option<usize>,
    host: Option<usize>,
}

const POSITIONAL: Columns = Columns {
    at: 0,
    path: 1,
    key: Some(2),
    class: Some(3),
    method: Some(4),
    host: Some(5),
};

fn header_columns(header: &csv::ByteRecord) -> Result<Columns, String> {
    let mut at = None;
    let mut path = None;
    let mut columns = Columns {
        at: 0,
        path: 0,
        key: None,
        class: None,
        method: None,
        host: None,
    };
    for (i, name) in header.iter().enumerate() {
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        match name.as_str() {
            "timestamp" | "ts" | "time" | "t" => at = Some(i),
            "path" => path = Some(i),
            "key" => columns.key = Some(i),
            "class" => columns.class = Some(i),
            "method" => columns.method = Some(i),
            "host" => columns.host = Some(i),
            _ => {} // other columns are ignored
        }
    }
    columns.at = at.ok_or("the header names no `timestamp` column")?;
    columns.path = path.ok_or("the header names no `path` column")?;
    Ok(columns)
}

fn parse_csv(bytes: &[u8], builder: &mut Builder) -> Result<(), TraceError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let mut record = csv::ByteRecord::new();
    let mut columns: Option<Columns> = None;
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(err) => {
                let line = err.position().map_or(0, |p| p.line());
                builder.bad(line, format!("unreadable CSV: {err}"))?;
                continue;
            }
        }
        let line = record.position().map_or(0, |p| p.line());
        if record.len() == 1 && record.get(0).is_some_and(|f| f.is_empty()) {
            continue; // a blank line
        }
        let cols = match columns {
            Some(cols) => cols,
            None => {
                // The first record: a header unless it starts with a timestamp.
                let first = record.get(0).unwrap_or_default();
                let data = std::str::from_utf8(first)
                    .ok()
                    .is_some_and(|t| parse_timestamp(t).is_ok());
                if data {
                    columns = Some(POSITIONAL);
                    POSITIONAL
                } else {
                    let cols = header_columns(&record)
                        .map_err(|message| builder.error(Some(line), message))?;
                    columns = Some(cols);
                    continue;
                }
            }
        };
        match csv_fields(&record, cols) {
            Ok(fields) => builder.push(line, fields)?,
            Err(message) => builder.bad(line, message)?,
        }
    }
}

fn csv_fields(record: &csv::ByteRecord, cols: Columns) -> Result<Fields<'_>, String> {
    let text = |i: Option<usize>| -> Result<Option<&str>, String> {
        match i.and_then(|i| record.get(i)).filter(|f| !f.is_empty()) {
            None => Ok(None),
            Some(f) => std::str::from_utf8(f)
                .map(Some)
                .map_err(|_| "a field is not valid UTF-8".to_string()),
        }
    };
    let at = text(Some(cols.at))?.ok_or("no timestamp")?;
    let path = text(Some(cols.path))?.ok_or_else(|| {
        if record.len() <= cols.path {
            format!(
                "expected at least {} fields (timestamp, path), found {}",
                cols.at.max(cols.path) + 1,
                record.len()
            )
        } else {
            "empty path".to_string()
        }
    })?;
    Ok(Fields {
        at: parse_timestamp(at)?,
        coarse: false,
        path: Cow::Borrowed(path),
        key: cols
            .key
            .and_then(|i| record.get(i))
            .filter(|k| !k.is_empty())
            .map(Cow::Borrowed),
        class: text(cols.class)?.map(Cow::Borrowed),
        method: text(cols.method)?.map(Cow::Borrowed),
        host: text(cols.host)?.map(Cow::Borrowed),
    })
}

// ---- line-based formats ----

fn parse_lines(
    bytes: &[u8],
    builder: &mut Builder,
    parse: fn(&str) -> Result<Fields<'_>, String>,
) -> Result<(), TraceError> {
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = index as u64 + 1;
        let raw = raw.trim_ascii();
        if raw.is_empty() || raw.starts_with(b"#") {
            continue;
        }
        let Ok(text) = std::str::from_utf8(raw) else {
            builder.bad(line, "not valid UTF-8".into())?;
            continue;
        };
        match parse(text) {
            Ok(fields) => builder.push(line, fields)?,
            Err(message) => builder.bad(line, message)?,
        }
    }
    Ok(())
}

// ---- JSON lines ----

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

fn parse_json_line(text: &str) -> Result<Fields<'_>, String> {
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

// ---- NGINX ----

/// One NGINX "combined" line, optionally with `$msec` first:
/// `[$msec ]$remote_addr - $remote_user [$time_local] "$request" $status ...`.
/// The key is `$remote_addr`; the time `$msec` when present, else
/// `[time_local]` (whole seconds, spread over the second).
fn parse_nginx_line(line: &str) -> Result<Fields<'_>, String> {
    let (first, rest) = line
        .split_once(' ')
        .ok_or("not an NGINX combined log line")?;
    let (msec, rest) = match parse_decimal_seconds(first) {
        Some(nanos) => (Some(nanos), rest.trim_start()),
        None => (None, line),
    };
    let (addr, rest) = rest
        .split_once(' ')
        .ok_or("not an NGINX combined log line: no fields after the address")?;
    let open = rest.find('[').ok_or("no `[time_local]` field")?;
    let close = rest[open..]
        .find(']')
        .map(|i| open + i)
        .ok_or("unterminated `[time_local]` field")?;
    let time_local = &rest[open + 1..close];
    let after = rest[close + 1..].trim_start();
    let request = after
        .strip_prefix('"')
        .and_then(|r| r.split_once('"'))
        .map(|(request, _)| request)
        .ok_or("no quoted request line after `[time_local]`")?;
    let mut parts = request.split(' ');
    let (method, target) = match (parts.next(), parts.next()) {
        (Some(m), Some(t)) if !m.is_empty() && t.starts_with('/') => (m, t),
        _ => {
            return Err(format!(
                "request line `{}` is not `METHOD /path PROTOCOL`",
                clip(request)
            ));
        }
    };
    let (at, coarse) = match msec {
        Some(nanos) => (nanos, false),
        None => (parse_time_local(time_local)? * NANOS_PER_SEC, true),
    };
    Ok(Fields {
        at,
        coarse,
        path: Cow::Borrowed(target),
        key: Some(Cow::Borrowed(addr.as_bytes())),
        class: None,
        method: Some(Cow::Borrowed(method)),
        host: None,
    })
}

/// `10/Oct/2000:13:55:36 -0700` to seconds since the Unix epoch.
fn parse_time_local(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "`[{}]` is not a time like `10/Oct/2000:13:55:36 -0700`",
            clip(text)
        )
    };
    let (datetime, zone) = text.split_once(' ').ok_or_else(bad)?;
    let mut parts = datetime.splitn(4, ':');
    let date = parts.next().ok_or_else(bad)?;
    let hms: Vec<i64> = parts
        .map(|p| p.parse::<i64>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let [hour, minute, second] = hms[..] else {
        return Err(bad());
    };
    let mut d = date.split('/');
    let (Some(day), Some(month), Some(year), None) = (d.next(), d.next(), d.next(), d.next())
    else {
        return Err(bad());
    };
    let day: i64 = day.parse().map_err(|_| bad())?;
    let year: i64 = year.parse().map_err(|_| bad())?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month).ok_or_else(bad)? as i64 + 1;
    let zone = zone.as_bytes();
    if zone.len() != 5 || !(zone[0] == b'+' || zone[0] == b'-') {
        return Err(bad());
    }
    let zone_digits = std::str::from_utf8(&zone[1..]).map_err(|_| bad())?;
    let zone_num: i64 = zone_digits.parse().map_err(|_| bad())?;
    let offset =
        (zone_num / 100 * 3600 + zone_num % 100 * 60) * if zone[0] == b'-' { -1 } else { 1 };
    if !(1..=31).contains(&day)
        || !(0..24).contains(&hour)
        || !(0..60).contains(&minute)
        || !(0..=60).contains(&second)
    {
        return Err(bad());
    }
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    u64::try_from(secs).map_err(|_| format!("`[{}]` is before 1970", clip(text)))
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_seconds_are_exact() {
        assert_eq!(parse_timestamp("0"), Ok(0));
        assert_eq!(parse_timestamp("1.5"), Ok(1_500_000_000));
        assert_eq!(parse_timestamp(".25"), Ok(250_000_000));
        assert_eq!(
            parse_timestamp("1700000000.123456789"),
            Ok(1_700_000_000_123_456_789)
        );
        assert!(parse_timestamp("-1").is_err());
        assert!(parse_timestamp("abc").is_err());
        assert!(parse_timestamp("").is_err());
        assert_eq!(parse_timestamp("1970-01-01T00:00:01.5Z"), Ok(1_500_000_000));
    }

    #[test]
    fn float_seconds_keep_what_f64_holds() {
        assert_eq!(
            float_seconds(1_769_860_800.125),
            Ok(1_769_860_800_125_000_000)
        );
        assert_eq!(
            float_seconds(1_769_860_800.123),
            Ok(1_769_860_800_123_000_000)
        );
        assert_eq!(float_seconds(0.1), Ok(100_000_000));
        assert_eq!(float_seconds(2.000_000_001), Ok(2_000_000_001));
        assert!(float_seconds(-1.0).is_err());
        assert!(float_seconds(f64::NAN).is_err());
    }

    #[test]
    fn time_local_with_zone() {
        // 2000-10-10T20:55:36Z
        assert_eq!(
            parse_time_local("10/Oct/2000:13:55:36 -0700"),
            Ok(971_211_336)
        );
        assert_eq!(parse_time_local("01/Jan/1970:00:00:00 +0000"), Ok(0));
        assert!(parse_time_local("10/Foo/2000:13:55:36 -0700").is_err());
    }

    #[test]
    fn nginx_line_with_and_without_msec() {
        let line = r#"203.0.113.9 - - [10/Oct/2000:13:55:36 -0700] "GET /a/b?x=1 HTTP/1.1" 200 2326 "-" "curl/8""#;
        let f = parse_nginx_line(line).unwrap();
        assert_eq!(f.path, "/a/b?x=1");
        assert_eq!(f.key.as_deref(), Some(&b"203.0.113.9"[..]));
        assert!(f.coarse);
        let line = format!("1700000000.250 {line}");
        let f = parse_nginx_line(&line).unwrap();
        assert_eq!(f.at, 1_700_000_000_250_000_000);
        assert!(!f.coarse);
        assert!(
            parse_nginx_line(r#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "-" 400 0 "-" "-""#)
                .is_err()
        );
    }

    #[test]
    fn detection() {
        assert_eq!(detect(b"\n{\"t\":0,\"path\":\"/\"}\n"), TraceFormat::Jsonl);
        assert_eq!(detect(b"0,/x\n"), TraceFormat::Csv);
        assert_eq!(
            detect(br#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 1 "-" "-""#),
            TraceFormat::Nginx
        );
    }
}
