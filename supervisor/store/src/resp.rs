//! The wire format: reading requests and writing replies (RESP2 and RESP3).
//!
//! Requests are parsed in place: [`parse_request`] never allocates or copies. It
//! records each argument as a byte range of the read buffer, so a pipeline of a
//! thousand `GET`s costs no allocation at all. It checks a frame *and* records
//! ranges in one pass; when the frame is not whole yet it answers
//! [`Parse::Incomplete`] with the least number of bytes worth waiting for, so a
//! 1 MiB value arriving in 64 KiB reads is not rescanned on every read.

use std::ops::Range;

use bytes::{BufMut, BytesMut};

/// Bounds on what one request may claim, checked before any of it is buffered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameLimits {
    /// Longest bulk string (a key or a value) the client may send.
    pub max_bulk: usize,
    /// Most elements in one multibulk request.
    pub max_args: usize,
    /// Longest whole request, all its arguments together.
    pub max_frame: usize,
}

/// Redis's own bound on a multibulk count (`1024*1024`).
pub(crate) const MAX_ARGS: usize = 1024 * 1024;
/// Redis's `proto-max-bulk-len`.
pub(crate) const MAX_BULK_HARD: usize = 512 * 1024 * 1024;
/// An inline command (`PING\r\n` typed into telnet) longer than this is garbage.
const MAX_INLINE: usize = 64 * 1024;
/// The digits of a length line: `*`/`$`, sign, up to 19 digits, CRLF.
const MAX_LENGTH_LINE: usize = 24;

/// What [`parse_request`] found at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parse {
    /// One request of `consumed` bytes; its arguments are in the range list (which
    /// may be empty: `*0\r\n` and blank inline lines are no-ops, as in Redis).
    Complete { consumed: usize },
    /// Not whole yet; do not retry before the buffer holds at least `need` bytes.
    Incomplete { need: usize },
    /// Not RESP: the client is answered `-ERR Protocol error: <reason>` and dropped.
    Invalid(&'static str),
}

/// Parses the request at the front of `buf`, recording its arguments into `args`
/// as ranges of `buf`. `args` is cleared first; it keeps its capacity.
pub(crate) fn parse_request(
    buf: &[u8],
    args: &mut Vec<Range<usize>>,
    limits: &FrameLimits,
) -> Parse {
    args.clear();
    match buf.first() {
        None => Parse::Incomplete { need: 1 },
        Some(b'*') => parse_multibulk(buf, args, limits),
        Some(_) => parse_inline(buf, args),
    }
}

fn parse_multibulk(buf: &[u8], args: &mut Vec<Range<usize>>, limits: &FrameLimits) -> Parse {
    let (count, mut pos) = match length_line(buf, 1) {
        Line::Value(n, next) => (n, next),
        Line::Incomplete => {
            return Parse::Incomplete {
                need: buf.len() + 1,
            }
        }
        Line::Invalid => return Parse::Invalid("invalid multibulk length"),
    };
    if count <= 0 {
        return Parse::Complete { consumed: pos };
    }
    let count = count as usize;
    if count > limits.max_args {
        return Parse::Invalid("invalid multibulk length");
    }
    for _ in 0..count {
        match buf.get(pos) {
            None => return Parse::Incomplete { need: pos + 1 },
            Some(b'$') => {}
            Some(_) => return Parse::Invalid("expected '$'"),
        }
        let (len, start) = match length_line(buf, pos + 1) {
            Line::Value(n, next) => (n, next),
            Line::Incomplete => {
                return Parse::Incomplete {
                    need: buf.len() + 1,
                }
            }
            Line::Invalid => return Parse::Invalid("invalid bulk length"),
        };
        if len < 0 || len as usize > limits.max_bulk {
            return Parse::Invalid("invalid bulk length");
        }
        let end = start + len as usize;
        if end + 2 > limits.max_frame {
            return Parse::Invalid("request too large");
        }
        if buf.len() < end + 2 {
            // The whole bulk plus at least the next header byte is worth waiting for.
            return Parse::Incomplete { need: end + 2 };
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Parse::Invalid("bulk string not terminated by CRLF");
        }
        args.push(start..end);
        pos = end + 2;
    }
    Parse::Complete { consumed: pos }
}

enum Line {
    /// The number and the offset just past its CRLF.
    Value(i64, usize),
    Incomplete,
    Invalid,
}

/// Reads a signed decimal terminated by CRLF starting at `from`.
fn length_line(buf: &[u8], from: usize) -> Line {
    let rest = &buf[from.min(buf.len())..];
    let window = &rest[..rest.len().min(MAX_LENGTH_LINE)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        return if rest.len() >= MAX_LENGTH_LINE {
            Line::Invalid
        } else {
            Line::Incomplete
        };
    };
    match rest.get(cr + 1) {
        None => return Line::Incomplete,
        Some(b'\n') => {}
        Some(_) => return Line::Invalid,
    }
    match parse_i64(&rest[..cr]) {
        Some(n) => Line::Value(n, from + cr + 2),
        None => Line::Invalid,
    }
}

/// Strict decimal: optional `-`, digits, no spaces, no overflow.
pub(crate) fn parse_i64(digits: &[u8]) -> Option<i64> {
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if negative { -n } else { n })
}

/// `PING\r\n`, `SET a b\r\n`: what telnet and `redis-benchmark` without `-P`… send
/// when typed by hand. Words split on spaces and tabs; quoting is not supported.
fn parse_inline(buf: &[u8], args: &mut Vec<Range<usize>>) -> Parse {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > MAX_INLINE {
            Parse::Invalid("too big inline request")
        } else {
            Parse::Incomplete {
                need: buf.len() + 1,
            }
        };
    };
    if nl > MAX_INLINE {
        return Parse::Invalid("too big inline request");
    }
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    let mut i = 0;
    while i < line_end {
        while i < line_end && matches!(buf[i], b' ' | b'\t') {
            i += 1;
        }
        let start = i;
        while i < line_end && !matches!(buf[i], b' ' | b'\t') {
            i += 1;
        }
        if i > start {
            args.push(start..i);
        }
    }
    Parse::Complete { consumed: nl + 1 }
}

/// Writes replies for one connection in the protocol version it chose with HELLO.
pub(crate) struct Reply<'a> {
    pub buf: &'a mut BytesMut,
    pub resp3: bool,
    /// The most bytes `buf` may hold: a string that would take it past this is
    /// not copied, and `overflowed` is set. Checked where the bytes come from
    /// the data (strings), so one reply never grows far past it.
    pub limit: usize,
    /// A string was dropped at `limit`: the reply is incomplete and the caller
    /// must discard it.
    pub overflowed: bool,
}

impl<'a> Reply<'a> {
    /// A writer with no limit (for replies the store composes itself).
    pub fn unlimited(buf: &'a mut BytesMut, resp3: bool) -> Reply<'a> {
        Reply {
            buf,
            resp3,
            limit: usize::MAX,
            overflowed: false,
        }
    }

    /// Whether `n` more bytes would take the buffer past the limit; marks the
    /// reply overflowed if so.
    fn over(&mut self, n: usize) -> bool {
        if self.overflowed || self.buf.len().saturating_add(n) > self.limit {
            self.overflowed = true;
        }
        self.overflowed
    }

    pub fn simple(&mut self, s: &str) {
        self.buf.put_u8(b'+');
        self.buf.put_slice(s.as_bytes());
        self.buf.put_slice(b"\r\n");
    }

    pub fn ok(&mut self) {
        self.buf.put_slice(b"+OK\r\n");
    }

    /// `msg` starts with the error code (`ERR`, `WRONGTYPE`, `NOAUTH`…).
    pub fn error(&mut self, msg: &str) {
        self.buf.put_u8(b'-');
        // A CR or LF inside an error would split the frame: Redis replaces them too.
        for &b in msg.as_bytes() {
            self.buf
                .put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
        }
        self.buf.put_slice(b"\r\n");
    }

    pub fn int(&mut self, n: i64) {
        self.header(b':', n);
    }

    pub fn bulk(&mut self, data: &[u8]) {
        if self.over(data.len()) {
            return;
        }
        self.header(b'$', data.len() as i64);
        self.buf.put_slice(data);
        self.buf.put_slice(b"\r\n");
    }

    pub fn bulk_str(&mut self, s: &str) {
        self.bulk(s.as_bytes());
    }

    /// A missing value: `$-1` in RESP2, `_` in RESP3.
    pub fn null(&mut self) {
        if self.resp3 {
            self.buf.put_slice(b"_\r\n");
        } else {
            self.buf.put_slice(b"$-1\r\n");
        }
    }

    /// A missing array (EXEC aborted by WATCH): `*-1` in RESP2, `_` in RESP3.
    pub fn null_array(&mut self) {
        if self.resp3 {
            self.buf.put_slice(b"_\r\n");
        } else {
            self.buf.put_slice(b"*-1\r\n");
        }
    }

    pub fn array(&mut self, len: usize) {
        self.header(b'*', len as i64);
    }

    /// A map of `pairs` entries; RESP2 has no maps, so it is a flat array there.
    pub fn map(&mut self, pairs: usize) {
        if self.resp3 {
            self.header(b'%', pairs as i64);
        } else {
            self.header(b'*', 2 * pairs as i64);
        }
    }

    /// An out-of-band message (pub/sub): a `>` push in RESP3, an array in RESP2.
    pub fn push(&mut self, len: usize) {
        if self.resp3 {
            self.header(b'>', len as i64);
        } else {
            self.header(b'*', len as i64);
        }
    }

    /// A set; RESP2 has none, so it is an array there.
    pub fn set(&mut self, len: usize) {
        self.header(if self.resp3 { b'~' } else { b'*' }, len as i64);
    }

    /// A verbatim text (INFO); RESP2 gets a bulk string.
    pub fn verbatim(&mut self, text: &str) {
        if self.over(text.len()) {
            return;
        }
        if self.resp3 {
            self.header(b'=', text.len() as i64 + 4);
            self.buf.put_slice(b"txt:");
        } else {
            self.header(b'$', text.len() as i64);
        }
        self.buf.put_slice(text.as_bytes());
        self.buf.put_slice(b"\r\n");
    }

    fn header(&mut self, kind: u8, n: i64) {
        let mut digits = itoa::Buffer::new();
        self.buf.put_u8(kind);
        self.buf.put_slice(digits.format(n).as_bytes());
        self.buf.put_slice(b"\r\n");
    }
}

/// Appends one command as a RESP array of bulk strings (the append-only log's
/// record format, which is also how a test client talks).
pub(crate) fn encode_command(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let mut digits = itoa::Buffer::new();
    out.push(b'*');
    out.extend_from_slice(digits.format(parts.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for part in parts {
        out.push(b'$');
        out.extend_from_slice(digits.format(part.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FrameLimits = FrameLimits {
        max_bulk: 1024,
        max_args: 16,
        max_frame: 1 << 20,
    };

    fn parse(buf: &[u8]) -> (Parse, Vec<Vec<u8>>) {
        let mut args = Vec::new();
        let p = parse_request(buf, &mut args, &LIMITS);
        let words = args.iter().map(|r| buf[r.clone()].to_vec()).collect();
        (p, words)
    }

    #[test]
    fn multibulk_whole_and_split_anywhere() {
        let frame = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
        let (p, words) = parse(frame);
        assert_eq!(
            p,
            Parse::Complete {
                consumed: frame.len()
            }
        );
        assert_eq!(
            words,
            vec![b"SET".to_vec(), b"k".to_vec(), b"hello".to_vec()]
        );
        for cut in 0..frame.len() {
            let (p, _) = parse(&frame[..cut]);
            match p {
                Parse::Incomplete { need } => assert!(need > cut && need <= frame.len(), "{cut}"),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn inline_and_empty() {
        assert_eq!(
            parse(b"PING\r\n"),
            (Parse::Complete { consumed: 6 }, vec![b"PING".to_vec()])
        );
        assert_eq!(
            parse(b"  get  key\n"),
            (
                Parse::Complete { consumed: 11 },
                vec![b"get".to_vec(), b"key".to_vec()]
            )
        );
        assert_eq!(parse(b"\r\n").0, Parse::Complete { consumed: 2 });
        assert_eq!(parse(b"*0\r\n").0, Parse::Complete { consumed: 4 });
        assert_eq!(parse(b"*-1\r\n").0, Parse::Complete { consumed: 5 });
    }

    #[test]
    fn garbage_is_invalid() {
        assert!(matches!(parse(b"*x\r\n").0, Parse::Invalid(_)));
        assert!(matches!(parse(b"*1\r\n:1\r\n").0, Parse::Invalid(_)));
        assert!(matches!(parse(b"*1\r\n$2000\r\n").0, Parse::Invalid(_)));
        assert!(matches!(parse(b"*17\r\n").0, Parse::Invalid(_)));
        assert!(matches!(parse(b"*1\r\n$1\r\nab\r\n").0, Parse::Invalid(_)));
        assert!(matches!(
            parse(b"*99999999999999999999999\r\n").0,
            Parse::Invalid(_)
        ));
        assert!(matches!(parse(b"*1\r\n$-5\r\n").0, Parse::Invalid(_)));
        assert!(matches!(parse(b"*1\rx").0, Parse::Invalid(_)));
    }

    #[test]
    fn integers_are_strict() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-12"), Some(-12));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
        assert_eq!(parse_i64(b""), None);
        assert_eq!(parse_i64(b"-"), None);
        assert_eq!(parse_i64(b"1 "), None);
        assert_eq!(parse_i64(b"+1"), None);
    }

    /// Seeded random frames, mutated and cut anywhere: the parser never panics,
    /// never claims more bytes than it has, and asks for more only when short.
    #[test]
    fn random_and_truncated_frames_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut args = Vec::new();
        for _ in 0..20_000 {
            let mut frame = Vec::new();
            let words: Vec<Vec<u8>> = (0..next() % 5)
                .map(|_| (0..next() % 12).map(|_| next() as u8).collect())
                .collect();
            let parts: Vec<&[u8]> = words.iter().map(Vec::as_slice).collect();
            encode_command(&mut frame, &parts);
            for _ in 0..next() % 4 {
                if frame.is_empty() {
                    break;
                }
                let at = (next() as usize) % frame.len();
                match next() % 3 {
                    0 => frame[at] = next() as u8,
                    1 => frame.insert(at, b"*$\r\n0123456789-"[(next() % 15) as usize]),
                    _ => {
                        frame.remove(at);
                    }
                }
            }
            let cut = (next() as usize) % (frame.len() + 1);
            let buf = &frame[..cut];
            match parse_request(buf, &mut args, &LIMITS) {
                Parse::Complete { consumed } => {
                    assert!(consumed > 0 && consumed <= buf.len());
                    assert!(args.iter().all(|r| r.end <= consumed));
                }
                Parse::Incomplete { need } => assert!(need > buf.len()),
                Parse::Invalid(_) => {}
            }
        }
    }
}
