//! The two pieces every head writer shares: a `name: value` line and a
//! number in decimal, both written without formatting machinery or
//! allocation (the server's response heads, the upstream request heads and
//! the forwarding fields all go through these).

use bytes::{BufMut, BytesMut};

/// Appends `name: value\r\n`.
pub(crate) fn put_field(dst: &mut BytesMut, name: &[u8], value: &[u8]) {
    dst.put_slice(name);
    dst.put_slice(b": ");
    dst.put_slice(value);
    dst.put_slice(b"\r\n");
}

/// `n` in decimal, written into the end of `digits`.
pub(crate) fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &digits[at..]
}

/// Appends `n` in decimal.
pub(crate) fn put_decimal(dst: &mut BytesMut, n: u64) {
    let mut digits = [0u8; 20];
    dst.put_slice(decimal(n, &mut digits));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_and_fields_are_written_as_text() {
        let mut dst = BytesMut::new();
        for n in [0, 7, 10, 1234567890, u64::MAX] {
            dst.clear();
            put_decimal(&mut dst, n);
            assert_eq!(&dst[..], n.to_string().as_bytes());
        }
        dst.clear();
        put_field(&mut dst, b"host", b"example.com");
        assert_eq!(&dst[..], b"host: example.com\r\n");
    }
}
