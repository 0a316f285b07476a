//! One record on disk: a frame with its length and a CRC32 of its contents.
//!
//! ```text
//! len: u32 LE | crc32: u32 LE | kind: u8 | seq: u64 LE | body: len - 9 bytes
//! ```
//!
//! `len` counts kind, seq and body; the CRC covers the same bytes. A frame
//! whose length runs past the end of the file, whose CRC does not match, or
//! whose kind is unknown ends the readable part of a segment: what follows
//! is a torn or corrupt tail.

/// Bytes before the body: length, CRC, kind, sequence number.
pub(crate) const HEADER_BYTES: usize = 4 + 4 + 1 + 8;

/// The largest body a frame may carry (a request record is bounded by
/// `max_body_bytes` and the head limits, far below this).
pub(crate) const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

/// What a frame records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A new entry; `seq` is its own sequence number.
    Entry = 1,
    /// The entry `seq` is done: it never comes back on replay.
    Done = 2,
    /// A note on the entry `seq` (attempts, parked as a dead letter, ...);
    /// the entry stays live.
    Note = 3,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Entry),
            2 => Some(Kind::Done),
            3 => Some(Kind::Note),
            _ => None,
        }
    }
}

/// A frame read back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Frame<'a> {
    pub(crate) kind: Kind,
    pub(crate) seq: u64,
    pub(crate) body: &'a [u8],
}

/// Appends the frame for (`kind`, `seq`, `body`) to `out`; the body starts
/// `HEADER_BYTES` after the frame.
pub(crate) fn encode(out: &mut Vec<u8>, kind: Kind, seq: u64, body: &[u8]) {
    let len = (1 + 8 + body.len()) as u32;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind as u8]);
    hasher.update(&seq.to_le_bytes());
    hasher.update(body);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&hasher.finalize().to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(body);
}

/// Why a frame could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bad {
    /// Fewer bytes left than the frame needs: written in part (torn).
    Torn,
    /// The bytes are all there but do not check out (corrupt).
    Corrupt,
}

/// Decodes the frame at the start of `buf`: the frame and its length in
/// bytes, `Ok(None)` at the exact end, or why the bytes there are no frame.
pub(crate) fn decode(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, Bad> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf.len() < HEADER_BYTES {
        return Err(Bad::Torn);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    // A zero length is what a preallocated or zero-filled tail reads as.
    if !(9..=MAX_BODY_BYTES + 9).contains(&len) {
        return Err(Bad::Corrupt);
    }
    let total = 8 + len;
    if buf.len() < total {
        return Err(Bad::Torn);
    }
    let covered = &buf[8..total];
    if crc32fast::hash(covered) != crc {
        return Err(Bad::Corrupt);
    }
    let kind = Kind::from_u8(covered[0]).ok_or(Bad::Corrupt)?;
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&covered[1..9]);
    Ok(Some((
        Frame {
            kind,
            seq: u64::from_le_bytes(seq),
            body: &covered[9..],
        },
        total,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_reads_back_and_any_flipped_bit_is_caught() {
        let mut out = Vec::new();
        encode(&mut out, Kind::Entry, 42, b"hello");
        assert_eq!(out.len(), HEADER_BYTES + 5);
        let (frame, used) = decode(&out).unwrap().unwrap();
        assert_eq!(
            (frame.kind, frame.seq, frame.body),
            (Kind::Entry, 42, &b"hello"[..])
        );
        assert_eq!(used, out.len());
        for i in 0..out.len() * 8 {
            let mut bad = out.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(decode(&bad).is_err(), "bit {i} flipped went unnoticed");
        }
        for cut in 1..out.len() {
            assert!(decode(&out[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(decode(&[]), Ok(None));
        assert_eq!(decode(&[0u8; 64]), Err(Bad::Corrupt));
    }
}
