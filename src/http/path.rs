//! Request paths in one spelling, so that a route's limit cannot be escaped
//! by writing its path another way (`//api`, `/./api`, `/%61pi`, `/x/../api`).
//!
//! [`normalise`] applies RFC 3986's normalisations (§6.2.2) in its order:
//! percent-encoded unreserved characters are decoded and the hex digits of the
//! other triplets upper-cased; then dot segments are removed (§5.2.4) and runs
//! of slashes merged. Reserved characters stay encoded — `%2F` is not a
//! segment separator, and decoding it would change what the path means. A
//! `..` that would climb above the root and a `%` not followed by two hex
//! digits are errors (400), as in NGINX. Case is kept: paths are
//! case-sensitive. An already normal path, the common case, is returned
//! borrowed after one pass over its bytes.

use std::borrow::Cow;

/// Why a path cannot be normalised; the request is answered 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("invalid percent-encoding in the path")]
    BadPercentEncoding,
    #[error("the path climbs above the root")]
    AboveRoot,
    #[error("the normalised path is not a valid request target")]
    Unrepresentable,
}

impl PathError {
    /// The text of the 400 answer.
    pub fn body(self) -> &'static str {
        match self {
            PathError::BadPercentEncoding => "invalid percent-encoding in the path\n",
            PathError::AboveRoot => "the path climbs above the root\n",
            PathError::Unrepresentable => "invalid path\n",
        }
    }
}

/// The path in normal form. A path that does not start with `/` (the `*` of
/// `OPTIONS *`, the empty path of CONNECT) is returned as it is.
pub fn normalise(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') || is_normal(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)?))
}

/// RFC 3986 §2.3: characters that mean the same encoded or not.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// The byte a `%XY` triplet at `at` encodes.
fn triplet(bytes: &[u8], at: usize) -> Option<u8> {
    let high = hex_value(*bytes.get(at + 1)?)?;
    let low = hex_value(*bytes.get(at + 2)?)?;
    Some(high << 4 | low)
}

/// Whether `normalise` would return the path unchanged: no empty, `.` or
/// `..` segment after the first slash, and only percent triplets that must
/// stay encoded, written in upper case. Anything doubtful (a bad triplet
/// included) is left to the slow path, which also reports the errors.
fn is_normal(bytes: &[u8]) -> bool {
    let mut segment_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'/' => {
                if i > 0 && !is_plain_segment(&bytes[segment_start..i]) {
                    return false;
                }
                segment_start = i + 1;
                // `//`: an empty segment in the middle.
                if bytes.get(i + 1) == Some(&b'/') {
                    return false;
                }
            }
            b'%' => match triplet(bytes, i) {
                Some(decoded)
                    if !is_unreserved(decoded)
                        && !bytes[i + 1..i + 3].iter().any(u8::is_ascii_lowercase) => {}
                _ => return false,
            },
            _ => {}
        }
    }
    // The last segment may be empty (a trailing slash), never a dot segment.
    is_plain_segment(&bytes[segment_start..]) || segment_start == bytes.len()
}

/// A segment that is neither empty nor `.` nor `..`.
fn is_plain_segment(segment: &[u8]) -> bool {
    !matches!(segment, b"" | b"." | b"..")
}

/// Decodes percent-encoded unreserved characters and upper-cases the hex of
/// the triplets that stay; a `%` without two hex digits is an error.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            i += 1;
            continue;
        }
        let decoded = triplet(bytes, i).ok_or(PathError::BadPercentEncoding)?;
        out.push_str(&path[copied..i]);
        if is_unreserved(decoded) {
            out.push(char::from(decoded));
        } else {
            out.push('%');
            out.push(char::from(bytes[i + 1].to_ascii_uppercase()));
            out.push(char::from(bytes[i + 2].to_ascii_uppercase()));
        }
        i += 3;
        copied = i;
    }
    out.push_str(&path[copied..]);
    Ok(out)
}

/// RFC 3986 §5.2.4 with runs of slashes merged; `path` starts with `/`. A
/// path ending in `/`, `/.` or `/..` keeps a trailing slash.
fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path[1..].split('/') {
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop().ok_or(PathError::AboveRoot)?;
            }
            _ => kept.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if kept.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(path: &str) -> Result<String, PathError> {
        normalise(path).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for path in [
            "/",
            "/api",
            "/api/",
            "/api/x",
            "/api/x.json",
            "/a/.hidden/..x/x..",
            "/a%2Fb",
            "/a%20b",
            "/caf%C3%A9",
            "/API/X",
            "/a;b=c/d",
            "*",
            "",
        ] {
            let got = normalise(path).unwrap();
            assert!(matches!(got, Cow::Borrowed(_)), "{path} was copied");
            assert_eq!(got, path);
        }
    }

    #[test]
    fn slashes_merge_and_dot_segments_go() {
        for (path, want) in [
            ("//api/x", "/api/x"),
            ("/api//x", "/api/x"),
            ("/api///", "/api/"),
            ("//", "/"),
            ("/./api/x", "/api/x"),
            ("/api/./x", "/api/x"),
            ("/x/../api/x", "/api/x"),
            ("/a/b/../../api", "/api"),
            ("/api/x/..", "/api/"),
            ("/api/x/.", "/api/x/"),
            ("/.", "/"),
            ("/a/..", "/"),
            ("/a/..//b", "/b"),
            ("/a/.../b", "/a/.../b"),
        ] {
            assert_eq!(normal(path).unwrap(), want, "{path}");
        }
    }

    #[test]
    fn unreserved_characters_are_decoded_reserved_ones_kept() {
        for (path, want) in [
            ("/%61pi/x", "/api/x"),
            ("/%41%5a%30%2D%2e%5F%7E", "/AZ0-._~"),
            ("/api%2Fx", "/api%2Fx"),
            ("/api%2fx", "/api%2Fx"),
            ("/a%3fb", "/a%3Fb"),
            ("/%25", "/%25"),
            ("/%2e/api", "/api"),
            ("/x/%2E%2E/api", "/api"),
            ("/x/.%2e/api", "/api"),
            ("/caf%c3%a9", "/caf%C3%A9"),
        ] {
            assert_eq!(normal(path).unwrap(), want, "{path}");
        }
    }

    #[test]
    fn climbing_above_the_root_is_refused() {
        for path in ["/..", "/../api", "/a/../../api", "/%2e%2e/api", "//../x"] {
            assert_eq!(normal(path), Err(PathError::AboveRoot), "{path}");
        }
    }

    #[test]
    fn bad_percent_encoding_is_refused() {
        for path in ["/%", "/%4", "/%zz", "/a%2", "/%g1/x", "/ok/%%41"] {
            assert_eq!(normal(path), Err(PathError::BadPercentEncoding), "{path}");
        }
    }

    /// Every path of up to five characters after the slash over an alphabet
    /// that makes every case (dots, slashes, triplets good and bad, hex of
    /// both cases): the result is normal, a fixed point, and borrowed when
    /// given again.
    #[test]
    fn every_short_path_normalises_to_a_fixed_point() {
        const ALPHABET: &[u8] = b"/.%2eEaF";
        let mut checked = 0;
        for len in 0..=5u32 {
            for n in 0..ALPHABET.len().pow(len) {
                let mut path = String::from("/");
                let mut rest = n;
                for _ in 0..len {
                    path.push(char::from(ALPHABET[rest % ALPHABET.len()]));
                    rest /= ALPHABET.len();
                }
                let Ok(once) = normal(&path) else {
                    continue;
                };
                checked += 1;
                assert!(once.starts_with('/'), "{path} -> {once}");
                assert!(!once.contains("//"), "{path} -> {once}");
                assert!(
                    !once.split('/').any(|s| s == "." || s == ".."),
                    "{path} -> {once}"
                );
                let again = normalise(&once).unwrap();
                assert!(matches!(again, Cow::Borrowed(_)), "{path} -> {once}");
                if matches!(normalise(&path).unwrap(), Cow::Borrowed(_)) {
                    assert_eq!(once, path);
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for path in ["//a/./b/../%63/%2f/", "/x/%2E./y", "/a//b///c/."] {
            let once = normal(path).unwrap();
            assert_eq!(normal(&once).unwrap(), once, "{path}");
            assert!(matches!(normalise(&once).unwrap(), Cow::Borrowed(_)));
        }
    }
}
