//! Locating errors: byte offset -> line, column and dotted key.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

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

/// Walks deeper than any real config nests; hostile nesting stops here
/// instead of overflowing the stack.
const MAX_WALK_DEPTH: usize = 128;

/// Where a key or value starts, the dotted path it stands for, and where its
/// reach ends: a value inside an array or inline table reaches no further
/// than its container (so a comment after `"x",` belongs to the array); a
/// key or value in a `[table]` reaches to the next token.
struct Mark {
    start: usize,
    end: usize,
    path: Vec<String>,
}

/// The dotted key in force at `offset` in the parsed document (as far as
/// the parser got), with array-of-tables and array indexes, e.g.
/// `["routes[1]", "limit", "rate"]`: the path of the last key, value or
/// header that starts at or before `offset` and still reaches it.
pub(crate) fn key_path_at(src: &str, root: &DeTable<'_>, offset: usize) -> Vec<String> {
    if let Some(path) = unclosed_header(src, root, offset) {
        return path;
    }
    let mut marks = Vec::new();
    walk_table(src, root, &[], usize::MAX, None, 0, &mut marks);
    marks
        .into_iter()
        .filter(|m| m.start <= offset && offset < m.end)
        .max_by_key(|m| (m.start, m.path.len()))
        .map(|m| m.path)
        .unwrap_or_default()
}

fn walk_table(
    src: &str,
    table: &DeTable<'_>,
    path: &[String],
    reach: usize,
    lead: Option<usize>,
    depth: usize,
    marks: &mut Vec<Mark>,
) {
    for (key, value) in table.iter() {
        let mut here = path.to_vec();
        here.push(key_segment(key.get_ref()));
        let (key_span, value_span) = (key.span(), value.span());
        // A dotted key's leading parts (`a` in `a.b = 1`) are tables whose
        // span is the key itself: the whole key stands for its last part.
        let dotted = value_span == key_span;
        // A header's key (`routes` in `[[routes]]`) is inside the header,
        // whose own mark (with the index) covers it.
        let in_header = value_span.start < key_span.start;
        if !dotted && !in_header {
            marks.push(Mark {
                start: lead.map_or(key_span.start, |lead| lead.min(key_span.start)),
                end: reach,
                path: here.clone(),
            });
        }
        let lead = dotted.then(|| lead.unwrap_or(key_span.start));
        walk_value(src, value, here, reach, lead, depth, marks);
    }
}

fn walk_value(
    src: &str,
    value: &Spanned<DeValue<'_>>,
    path: Vec<String>,
    reach: usize,
    lead: Option<usize>,
    depth: usize,
    marks: &mut Vec<Mark>,
) {
    if depth >= MAX_WALK_DEPTH {
        return;
    }
    let span = value.span();
    // Inline tables start with `{`; a `[header]` table's span is its header.
    // An array of tables (`[[x]]`) spans its first header, as its first item
    // does; an inline array spans its items.
    let inline = match value.get_ref() {
        DeValue::Table(_) => src.as_bytes().get(span.start) == Some(&b'{'),
        DeValue::Array(items) => items.first().is_none_or(|first| first.span() != span),
        _ => false,
    };
    // An inline array or table holds its contents; a `[header]` table's keys
    // follow its header up to the next one.
    let inner_reach = if inline { reach.min(span.end) } else { reach };
    if lead.is_none() {
        marks.push(Mark {
            start: span.start,
            end: reach,
            path: path.clone(),
        });
    }
    match value.get_ref() {
        DeValue::Table(table) => {
            walk_table(src, table, &path, inner_reach, lead, depth + 1, marks);
        }
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let mut here = path.clone();
                if let Some(last) = here.last_mut() {
                    last.push_str(&format!("[{i}]"));
                }
                let item_span = item.span();
                // `[[x]]` items are header tables; inline items end where they
                // end, and the first one starts at the array's `[`.
                let item_reach = if inline {
                    item_span.end.min(inner_reach)
                } else {
                    reach
                };
                if inline && i == 0 {
                    marks.push(Mark {
                        start: span.start,
                        end: item_reach,
                        path: here.clone(),
                    });
                }
                walk_value(src, item, here, item_reach, None, depth + 1, marks);
            }
        }
        _ => {}
    }
}

/// The dotted key of the value whose span is exactly `span`, if the document
/// has one: what a checker's error about a whole value (say an inline array)
/// is about, where [`key_path_at`] would name the array's first item. An
/// array of tables shares its first header's span with its first item; the
/// item, the longer path, is meant.
pub(crate) fn key_path_of(root: &DeTable<'_>, span: &Range<usize>) -> Option<Vec<String>> {
    let mut found = None;
    for (key, value) in root.iter() {
        find_span(value, vec![key_segment(key.get_ref())], span, 0, &mut found);
    }
    found
}

fn find_span(
    value: &Spanned<DeValue<'_>>,
    path: Vec<String>,
    span: &Range<usize>,
    depth: usize,
    found: &mut Option<Vec<String>>,
) {
    if depth >= MAX_WALK_DEPTH {
        return;
    }
    // Items are visited after their array: the last match is the innermost.
    if value.span() == *span {
        *found = Some(path.clone());
    }
    match value.get_ref() {
        DeValue::Table(table) => {
            for (key, inner) in table.iter() {
                let mut here = path.clone();
                here.push(key_segment(key.get_ref()));
                find_span(inner, here, span, depth + 1, found);
            }
        }
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let mut here = path.clone();
                if let Some(last) = here.last_mut() {
                    last.push_str(&format!("[{i}]"));
                }
                find_span(item, here, span, depth + 1, found);
            }
        }
        _ => {}
    }
}

/// A header the parser could not close (`[routes.limit` with no `]`) is
/// not in the recovered tree. Closed and parsed on its own it gives its
/// keys; the tree gives the index of each array of tables on the way.
fn unclosed_header(src: &str, root: &DeTable<'_>, offset: usize) -> Option<Vec<String>> {
    let line_start = src.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let text = src.get(line_start..offset)?.trim();
    if !text.starts_with('[') {
        return None;
    }
    let array = text.starts_with("[[");
    let closed = [format!("{text}]"), format!("{text}]]")];
    let header = closed.iter().find_map(|c| DeTable::parse(c).ok())?;
    let mut path = Vec::new();
    let (mut alone, mut tree) = (header.into_inner(), Some(root));
    loop {
        let (key, value) = alone.into_iter().next()?;
        let name = key.get_ref().to_string();
        let found = tree
            .and_then(|t| t.get(name.as_str()))
            .map(Spanned::get_ref);
        let mut segment = key_segment(&name);
        let next = match value.into_inner() {
            DeValue::Table(inner) => {
                tree = match found {
                    Some(DeValue::Table(t)) => Some(t),
                    Some(DeValue::Array(items)) => {
                        // Items whose header comes before this line; the
                        // last of them is the one this header belongs to.
                        let before = items.iter().filter(|i| i.span().start < line_start).count();
                        segment.push_str(&format!("[{}]", before.saturating_sub(1)));
                        match items.get(before.saturating_sub(1)).map(Spanned::get_ref) {
                            Some(DeValue::Table(t)) => Some(t),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                Some(inner)
            }
            DeValue::Array(_) if array => {
                // The last key of a `[[header]]`: a new item after the ones before it.
                let before = match found {
                    Some(DeValue::Array(items)) => {
                        items.iter().filter(|i| i.span().start < line_start).count()
                    }
                    _ => 0,
                };
                segment.push_str(&format!("[{before}]"));
                None
            }
            _ => None,
        };
        path.push(segment);
        match next {
            Some(inner) if !inner.is_empty() => alone = inner,
            _ => return Some(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_characters_and_clamps() {
        let src = "ab\ncdé\r\nf";
        assert_eq!(line_column(src, 0), (1, 1));
        assert_eq!(line_column(src, 2), (1, 3));
        assert_eq!(line_column(src, 3), (2, 1));
        assert_eq!(line_column(src, 7), (2, 4)); // after "é", which is two bytes
        assert_eq!(line_column(src, 6), (2, 3)); // inside "é": clamped to its start
        assert_eq!(line_column(src, 9), (3, 1));
        assert_eq!(line_column(src, 1000), (3, 2));
        assert_eq!(line_column("", 5), (1, 1));
    }

    #[test]
    fn key_path_follows_headers_keys_and_indexes() {
        let src = "\u{feff}top = 1
[server]   # a comment with [brackets] and \"quotes\"
listen = \"[x]\" # trailing
[[routes]]
name = 'a'
[routes.limit]
rate = 1
[[routes]]
name = \"\"\"
[not.a.header]
\"\"\"
a.\"b c\" . 'd' = { e = [1, { f = 2 }], g = 3 }
arr = [
  \"x\",   # one
  [\"y\", 'z'],
]
[[routes]]
[routes.limit]
[\"quoted key\".x]
[[a.b]]
[[a.b]]
[a]
";
        let (root, _) = toml::de::DeTable::parse_recoverable(src);
        let at = |needle: &str| {
            let offset = src
                .find(needle)
                .unwrap_or_else(|| panic!("{needle:?} not in source"));
            display_key(&key_path_at(src, root.get_ref(), offset))
        };
        assert_eq!(at("top"), "top");
        assert_eq!(at("1\n[server]"), "top");
        assert_eq!(at("[server]"), "server");
        assert_eq!(at("# a comment"), "server");
        assert_eq!(at("[x]"), "server.listen");
        assert_eq!(at("# trailing"), "server.listen");
        assert_eq!(at("[[routes]]\nname = 'a'"), "routes[0]");
        assert_eq!(at("'a'"), "routes[0].name");
        assert_eq!(at("[routes.limit]\nrate"), "routes[0].limit");
        assert_eq!(at("rate = 1"), "routes[0].limit.rate");
        assert_eq!(at("[[routes]]\nname = \"\"\""), "routes[1]");
        assert_eq!(at("[not.a.header]"), "routes[1].name");
        assert_eq!(at("a.\"b c\""), "routes[1].a.\"b c\".d");
        assert_eq!(at("'d'"), "routes[1].a.\"b c\".d");
        assert_eq!(at("e = [1"), "routes[1].a.\"b c\".d.e");
        assert_eq!(at("1, {"), "routes[1].a.\"b c\".d.e[0]");
        assert_eq!(at("f = 2"), "routes[1].a.\"b c\".d.e[1].f");
        assert_eq!(at("g = 3"), "routes[1].a.\"b c\".d.g");
        assert_eq!(at("\"x\""), "routes[1].arr[0]");
        assert_eq!(at("# one"), "routes[1].arr");
        assert_eq!(at("'z'"), "routes[1].arr[1][1]");
        assert_eq!(at("[[routes]]\n[routes.limit]"), "routes[2]");
        assert_eq!(at("[routes.limit]\n[\"quoted"), "routes[2].limit");
        assert_eq!(at("[\"quoted key\".x]"), "\"quoted key\".x");
        assert_eq!(at("[[a.b]]\n[[a.b]]\n[a]"), "a.b[0]");
        assert_eq!(at("[[a.b]]\n[a]"), "a.b[1]");
        assert_eq!(at("[a]\n"), "a");
        assert_eq!(
            display_key(&key_path_at(src, root.get_ref(), src.len() + 10)),
            "a"
        );
        let (empty, _) = toml::de::DeTable::parse_recoverable("");
        assert_eq!(
            display_key(&key_path_at("", empty.get_ref(), 0)),
            "(top level)"
        );
    }

    #[test]
    fn nested_arrays_of_tables_restart_their_index() {
        let src = "[[r]]\n[[r.x]]\n[[r.x]]\n[[r]]\n[[r.x]]\nk = 1\n";
        let offset = src.find("k = 1").expect("k");
        let (root, _) = toml::de::DeTable::parse_recoverable(src);
        assert_eq!(
            display_key(&key_path_at(src, root.get_ref(), offset)),
            "r[1].x[0].k"
        );
    }

    #[test]
    fn key_path_of_names_the_whole_value_or_the_item_of_a_header() {
        let src = "[[r]]\nm = [\"a\", \"b\"]\n[[r]]\nt = { x = [] }\n";
        let (root, _) = toml::de::DeTable::parse_recoverable(src);
        let root = root.get_ref();
        let of = |needle: &str, len: usize| {
            let start = src.find(needle).expect("needle in source");
            key_path_of(root, &(start..start + len)).map(|p| display_key(&p))
        };
        // The inline array itself, not its first item (which key_path_at gives).
        assert_eq!(of("[\"a\"", 10).as_deref(), Some("r[0].m"));
        assert_eq!(
            display_key(&key_path_at(src, root, src.find("[\"a\"").expect("a"))),
            "r[0].m[0]"
        );
        assert_eq!(of("\"b\"", 3).as_deref(), Some("r[0].m[1]"));
        // An array of tables and its first item share the header's span.
        assert_eq!(of("[[r]]\nm", 5).as_deref(), Some("r[0]"));
        assert_eq!(of("[[r]]\nt", 5).as_deref(), Some("r[1]"));
        assert_eq!(of("[]", 2).as_deref(), Some("r[1].t.x"));
        assert_eq!(of("[]", 1), None);
    }

    #[test]
    fn quoted_field_reads_serde_messages() {
        assert_eq!(
            quoted_field("missing field `upstream`", "missing field "),
            Some("upstream")
        );
        assert_eq!(
            quoted_field("unknown field `x`, expected `a`", "unknown field "),
            Some("x")
        );
        assert_eq!(quoted_field("invalid type", "unknown field "), None);
    }
}
