//! CSV traces: `timestamp,path[,key[,class[,method[,host]]]]`, or any
//! order under a header line naming the columns.

use std::borrow::Cow;

use super::builder::Builder;
use super::time::parse_timestamp;
use super::{Fields, TraceError};

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

pub(super) fn parse_csv(bytes: &[u8], builder: &mut Builder) -> Result<(), TraceError> {
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
