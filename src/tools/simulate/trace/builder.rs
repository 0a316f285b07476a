//! Assembling a trace as it is read: interning methods, hosts and classes,
//! the path arena, and the final sort (with coarse times spread).

use std::collections::HashMap;

use http::Method;

use super::{Fields, NANOS_PER_SEC, Record, Trace, TraceError, TraceFormat, clip};

/// A trace being read: records in file order, the path arena, interned
/// methods, hosts and classes, and the malformed lines skipped.
pub(super) struct Builder {
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
    pub(super) fn new(source: &str, format: TraceFormat, skip_bad: bool) -> Builder {
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

    pub(super) fn error(&self, line: Option<u64>, message: String) -> TraceError {
        TraceError {
            source: self.source.clone(),
            line,
            message,
        }
    }

    /// A malformed line: an error, or skipped and counted with `skip_bad`.
    pub(super) fn bad(&mut self, line: u64, message: String) -> Result<(), TraceError> {
        let error = self.error(Some(line), message);
        if !self.skip_bad {
            return Err(error);
        }
        self.skipped += 1;
        self.first_bad.get_or_insert(error);
        Ok(())
    }

    pub(super) fn push(&mut self, line: u64, fields: Fields<'_>) -> Result<(), TraceError> {
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
    pub(super) fn finish(mut self) -> Trace {
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
