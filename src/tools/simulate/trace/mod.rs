//! Request traces: CSV, JSON lines, and NGINX access logs ("combined", with
//! `[time_local]` or with `$msec` as the first field), read into one compact
//! in-memory form sorted by arrival time.
//!
//! Each request keeps its arrival time (nanoseconds after the trace's first
//! request), its path (without the query), method, host, optional client key
//! (hashed) and optional class name. Paths live in one string arena and
//! methods, hosts and class names are interned, so a record is 32 bytes and
//! two million requests take about 64 MiB plus their paths.
//!
//! Here the compact form ([`Trace`], [`Record`]) and the line loop; the
//! formats in `csv`, `jsonl` and `nginx`, times in `time`, and the
//! interning, sorting and spreading of a trace being read in `builder`.

mod builder;
mod csv;
mod jsonl;
mod nginx;
mod time;

use std::borrow::Cow;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use http::Method;

use builder::Builder;
use csv::parse_csv;
use jsonl::parse_json_line;
use nginx::{looks_like_nginx, parse_nginx_line};

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

/// A line's parsed fields, before interning.
pub(super) struct Fields<'a> {
    at: u64,
    coarse: bool,
    path: Cow<'a, str>,
    key: Option<Cow<'a, [u8]>>,
    class: Option<Cow<'a, str>>,
    method: Option<Cow<'a, str>>,
    host: Option<Cow<'a, str>>,
}

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

/// At most 60 characters of `text`, for messages.
fn clip(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(60) {
        Some((cut, _)) => Cow::Owned(format!("{}...", &text[..cut])),
        None => Cow::Borrowed(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
