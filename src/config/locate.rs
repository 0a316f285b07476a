//! Locating errors: byte offset -> line, column and dotted key.

use std::collections::HashMap;

/// 1-based line and column (in characters) of a byte offset; offsets past the
/// end or inside a character are clamped rather than trusted.
pub(crate) fn line_column(src: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// `(top level)` when nothing narrower is known.
pub(crate) fn display_key(path: &[String]) -> String {
    if path.is_empty() {
        "(top level)".to_string()
    } else {
        path.join(".")
    }
}

/// A key as it would be written in TOML: bare when possible, quoted otherwise.
pub(crate) fn key_segment(name: &str) -> String {
    if !name.is_empty() && name.bytes().all(is_bare_key_byte) {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

pub(crate) fn is_bare_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// The name in "missing field `upstream`" / "unknown field `rat`, expected ...".
pub(crate) fn quoted_field<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    message
        .strip_prefix(prefix)?
        .strip_prefix('`')?
        .split('`')
        .next()
}

/// The dotted key in force at `offset`, with array-of-tables and array indexes,
/// e.g. `["routes[1]", "limit", "rate"]`.
///
/// The TOML parser only reports byte spans, and for a syntax error there is no
/// document tree to ask, so this reads the text itself. It follows just enough
/// of the grammar (headers, dotted and quoted keys, strings of all four kinds,
/// comments, arrays and inline tables) to know which key each token belongs to,
/// and it is total: any input, however broken, yields some path.
pub(crate) fn key_path_at(src: &str, offset: usize) -> Vec<String> {
    let mut scanner = KeyScanner {
        src: src.as_bytes(),
        pos: 0,
        target: offset,
        table: Vec::new(),
        tables_in_arrays: HashMap::new(),
        found: Vec::new(),
        depth: 0,
    };
    scanner.run();
    scanner.found
}

pub(crate) struct KeyScanner<'a> {
    src: &'a [u8],
    pos: usize,
    /// The byte offset whose key we want.
    target: usize,
    /// The header in force, indexes resolved (`["routes[1]", "limit"]`).
    table: Vec<String>,
    /// How many `[[x]]` headers each resolved path has had so far.
    tables_in_arrays: HashMap<String, usize>,
    /// The path of the last token that starts at or before `target`.
    found: Vec<String>,
    /// Arrays and inline tables currently open, bounded so hostile nesting
    /// cannot overflow the stack.
    depth: usize,
}

/// Deeper than the TOML parser itself accepts, so every real error is reached.
pub(crate) const MAX_SCAN_DEPTH: usize = 128;

impl KeyScanner<'_> {
    fn run(&mut self) {
        if self.src.starts_with("\u{feff}".as_bytes()) {
            self.pos = 3;
        }
        while self.pos < self.src.len() && self.pos <= self.target {
            self.line();
        }
    }

    /// Records that the token starting at `start` belongs to `path`.
    fn note(&mut self, start: usize, path: &[String]) {
        if start <= self.target {
            self.found = path.to_vec();
        }
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<u8> {
        self.src.get(self.pos + ahead).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn skip_spaces(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// Spaces, newlines and comments: what may sit between array elements.
    fn skip_blank(&mut self) {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\r' | b'\n') => self.pos += 1,
                Some(b'#') => self.skip_line(),
                _ => return,
            }
        }
    }

    fn skip_line(&mut self) {
        while let Some(b) = self.peek() {
            self.pos += 1;
            if b == b'\n' {
                return;
            }
        }
    }

    /// One line at statement level: blank, comment, header or key/value. Whatever
    /// is left on the line afterwards (a comment, trailing junk) keeps the path of
    /// the key before it, which is what an error there is about.
    fn line(&mut self) {
        let table = self.table.clone();
        self.note(self.pos, &table);
        self.skip_spaces();
        match self.peek() {
            Some(b'[') => self.header(),
            Some(b'#' | b'\r' | b'\n') | None => {}
            Some(_) => self.key_value(&table),
        }
        self.skip_line();
    }

    fn header(&mut self) {
        let start = self.pos;
        self.pos += 1;
        let is_array = self.eat(b'[');
        let segments = self.dotted_key();
        self.table = self.resolve_header(&segments, is_array);
        let table = self.table.clone();
        self.note(start, &table);
    }

    /// `[routes.limit]` after the second `[[routes]]` is `routes[1].limit`;
    /// `[[routes]]` itself opens the next index.
    fn resolve_header(&mut self, segments: &[String], is_array: bool) -> Vec<String> {
        let mut path: Vec<String> = Vec::with_capacity(segments.len());
        // The resolved path so far as one string: the key of `tables_in_arrays`.
        let mut id = String::new();
        for (i, segment) in segments.iter().enumerate() {
            let mut name = key_segment(segment);
            // Past any sane nesting, skip the lookups, which would make a hostile
            // header of thousands of segments quadratic.
            if i < MAX_SCAN_DEPTH {
                if !id.is_empty() {
                    id.push('.');
                }
                id.push_str(&name);
                let index = if is_array && i + 1 == segments.len() {
                    let count = self.tables_in_arrays.entry(id.clone()).or_insert(0);
                    *count += 1;
                    Some(*count - 1)
                } else {
                    self.tables_in_arrays
                        .get(&id)
                        .map(|count| count.saturating_sub(1))
                };
                if let Some(index) = index {
                    let suffix = format!("[{index}]");
                    id.push_str(&suffix);
                    name.push_str(&suffix);
                }
            }
            path.push(name);
        }
        path
    }

    fn key_value(&mut self, table: &[String]) {
        let start = self.pos;
        let segments = self.dotted_key();
        if segments.is_empty() {
            return;
        }
        let mut path = table.to_vec();
        path.extend(segments.iter().map(|s| key_segment(s)));
        self.note(start, &path);
        self.skip_spaces();
        if self.eat(b'=') {
            self.value(&path);
        }
    }

    /// `a . "b c" . 'd'` -> ["a", "b c", "d"]; empty if no key starts here.
    fn dotted_key(&mut self) -> Vec<String> {
        let mut segments = Vec::new();
        loop {
            self.skip_spaces();
            match self.simple_key() {
                Some(segment) => segments.push(segment),
                None => break,
            }
            self.skip_spaces();
            if !self.eat(b'.') {
                break;
            }
        }
        segments
    }

    fn simple_key(&mut self) -> Option<String> {
        let start = self.pos;
        match self.peek()? {
            q @ (b'"' | b'\'') => {
                self.single_line_string(q);
                // Escapes are left as written: the key is only shown, never looked up.
                let end = self.pos.saturating_sub(1).max(start + 1);
                let inner = self.src.get(start + 1..end).unwrap_or_default();
                Some(String::from_utf8_lossy(inner).into_owned())
            }
            b if is_bare_key_byte(b) => {
                while self.peek().is_some_and(is_bare_key_byte) {
                    self.pos += 1;
                }
                Some(String::from_utf8_lossy(&self.src[start..self.pos]).into_owned())
            }
            _ => None,
        }
    }

    fn value(&mut self, path: &[String]) {
        self.skip_spaces();
        self.note(self.pos, path);
        match self.peek() {
            Some(b'[' | b'{') if self.depth >= MAX_SCAN_DEPTH => self.pos += 1,
            Some(b'[') => self.nested(|s| s.array(path)),
            Some(b'{') => self.nested(|s| s.inline_table(path)),
            Some(q @ (b'"' | b'\'')) => self.string(q),
            Some(b'#' | b'\r' | b'\n') | None => {}
            Some(_) => self.scalar(),
        }
    }

    fn nested(&mut self, read: impl FnOnce(&mut Self)) {
        self.depth += 1;
        read(self);
        self.depth -= 1;
    }

    /// Numbers, booleans, dates: everything up to the next delimiter.
    fn scalar(&mut self) {
        while let Some(b) = self.peek() {
            if matches!(b, b',' | b']' | b'}' | b'#' | b' ' | b'\t' | b'\r' | b'\n') {
                return;
            }
            self.pos += 1;
        }
    }

    fn array(&mut self, path: &[String]) {
        self.pos += 1;
        let mut index = 0;
        loop {
            self.skip_blank();
            match self.peek() {
                None => return,
                Some(b']') => {
                    self.pos += 1;
                    return;
                }
                Some(b',') => {
                    self.note(self.pos, path);
                    self.pos += 1;
                    index += 1;
                }
                Some(_) => {
                    let mut element = path.to_vec();
                    if let Some(last) = element.last_mut() {
                        last.push_str(&format!("[{index}]"));
                    }
                    let before = self.pos;
                    self.value(&element);
                    // Something that is not a value: step over it so we always advance.
                    if self.pos == before {
                        self.pos += 1;
                    }
                }
            }
        }
    }

    fn inline_table(&mut self, path: &[String]) {
        self.pos += 1;
        loop {
            self.skip_blank();
            match self.peek() {
                None => return,
                Some(b'}') => {
                    self.pos += 1;
                    return;
                }
                Some(b',') => {
                    self.note(self.pos, path);
                    self.pos += 1;
                }
                Some(_) => {
                    let before = self.pos;
                    self.key_value(path);
                    if self.pos == before {
                        self.pos += 1;
                    }
                }
            }
        }
    }

    fn string(&mut self, quote: u8) {
        if self.peek_at(1) == Some(quote) && self.peek_at(2) == Some(quote) {
            self.multi_line_string(quote);
        } else {
            self.single_line_string(quote);
        }
    }

    /// Stops after the closing quote, or before the newline if there is none.
    fn single_line_string(&mut self, quote: u8) {
        self.pos += 1;
        while let Some(b) = self.peek() {
            match b {
                b'\n' => return,
                b'\\' if quote == b'"' => self.pos += 2,
                _ if b == quote => {
                    self.pos += 1;
                    return;
                }
                _ => self.pos += 1,
            }
        }
    }

    fn multi_line_string(&mut self, quote: u8) {
        self.pos += 3;
        while let Some(b) = self.peek() {
            if b == b'\\' && quote == b'"' {
                self.pos += 2;
            } else if b == quote && self.peek_at(1) == Some(quote) && self.peek_at(2) == Some(quote)
            {
                self.pos += 3;
                // Up to two more quotes may end the content itself (`""""x"""""`).
                for _ in 0..2 {
                    self.eat(quote);
                }
                return;
            } else {
                self.pos += 1;
            }
        }
    }
}
