//! Segment files: naming, listing, and reading one back on open.
//!
//! A segment is `NNNNNNNNNNNNNNNNNNNN.log` (its number, 20 digits, so the
//! names sort as the numbers do): an 8-byte magic, then frames. Segments
//! are written in number order and only the newest is appended to.
//!
//! Invariant: after [`scan`], the file holds only whole, checked frames —
//! a torn or corrupt tail has been cut off (and logged), never trusted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::frame::{self, Bad, Frame};

/// The first bytes of every segment: the format and its version.
pub(crate) const MAGIC: &[u8; 8] = b"SLJRNL01";

/// The file of segment `number` in `dir`.
pub(crate) fn path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.log"))
}

/// The segment numbers in `dir`, oldest first. Other files are left alone.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut numbers = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(number) = name
            .strip_suffix(".log")
            .filter(|n| n.len() == 20)
            .and_then(|n| n.parse::<u64>().ok())
        {
            numbers.push(number);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Creates segment `number` with its magic, and makes its name durable.
pub(crate) fn create(dir: &Path, number: u64) -> io::Result<File> {
    use std::io::Write;
    let path = path(dir, number);
    let mut file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .append(true)
        .open(&path)?;
    file.write_all(MAGIC)?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(file)
}

/// Makes the directory's entries (a created or removed segment) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What reading a segment back found past its last whole frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cut {
    /// Where the readable part ends (the file's new length).
    pub(crate) at: u64,
    /// Bytes cut off after it.
    pub(crate) bytes: u64,
    pub(crate) why: &'static str,
}

/// Reads segment `number`, calling `visit` with each whole frame and the
/// file offset of its body, in order. A torn or corrupt tail is cut off the
/// file (truncated and synced) and described in the result; a segment too
/// short for its magic is cut to nothing but its magic.
pub(crate) fn scan(
    dir: &Path,
    number: u64,
    mut visit: impl FnMut(Frame<'_>, u64),
) -> io::Result<Option<Cut>> {
    let path = path(dir, number);
    let mut bytes = Vec::new();
    File::open(&path)?.read_to_end(&mut bytes)?;
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        let cut = Cut {
            at: MAGIC.len() as u64,
            bytes: bytes.len() as u64,
            why: "no segment header",
        };
        let mut file = OpenOptions::new().write(true).truncate(true).open(&path)?;
        std::io::Write::write_all(&mut file, MAGIC)?;
        file.sync_all()?;
        return Ok(Some(cut));
    }
    let mut at = MAGIC.len();
    let cut = loop {
        match frame::decode(&bytes[at..]) {
            Ok(None) => break None,
            Ok(Some((frame, used))) => {
                let body_at = (at + frame::HEADER_BYTES) as u64;
                visit(frame, body_at);
                at += used;
            }
            Err(bad) => {
                break Some(Cut {
                    at: at as u64,
                    bytes: (bytes.len() - at) as u64,
                    why: match bad {
                        Bad::Torn => "torn frame (written in part)",
                        Bad::Corrupt => "checksum or header mismatch",
                    },
                });
            }
        }
    };
    if let Some(cut) = cut {
        let file = OpenOptions::new().write(true).open(&path)?;
        file.set_len(cut.at)?;
        file.sync_all()?;
    }
    Ok(cut)
}
