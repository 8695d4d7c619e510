//! The history files: fixed-size binary records in time-named segments.
//!
//! ```text
//! <state_dir>/history/<app>/full-<start_ms>.bin     one record per worker per sample
//! <state_dir>/history/<app>/coarse-<start_ms>.bin   one record per worker per minute:
//!                                                   min / max / mean of its samples
//! ```
//!
//! Every file starts with a 16-byte header (`AVHIST`, version, kind, record length)
//! and holds whole records only, each ending in a checksum (FNV-1a, 32 bits) of its
//! other bytes. Records are appended, never rewritten; a segment is deleted whole
//! (retention, size bound). A crash in the middle of an append leaves a torn tail:
//! the reader ignores it, and the recorder cuts it off (with a warning) before it
//! writes again, as the store's log does. A record whose checksum does not match is
//! skipped and counted.
//!
//! Memory figures are stored in KiB (what `/proc` reports), so a `u32` holds 4 TiB;
//! virtual sizes, requests and CPU milliseconds get 64 bits.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// What kind of segment a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Every sample, at `sample_interval`.
    Full,
    /// One bucket of [`BUCKET_MS`] per worker: min, max, mean.
    Coarse,
}

impl Kind {
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Coarse => "coarse",
        }
    }

    pub fn record_len(self) -> usize {
        match self {
            Kind::Full => FULL_LEN,
            Kind::Coarse => COARSE_LEN,
        }
    }

    fn code(self) -> u8 {
        match self {
            Kind::Full => 1,
            Kind::Coarse => 2,
        }
    }
}

pub const HEADER_LEN: usize = 16;
const MAGIC: &[u8; 6] = b"AVHIST";
const VERSION: u8 = 1;
pub const FULL_LEN: usize = 64;
pub const COARSE_LEN: usize = 96;
/// The width of a coarse bucket.
pub const BUCKET_MS: u64 = 60_000;

/// A worker's phase when sampled.
pub const PHASE_STARTING: u8 = 0;
pub const PHASE_SERVING: u8 = 1;
pub const PHASE_DRAINING: u8 = 2;

/// One record, full or coarse, decoded. A full record has `count == 1`, min = max =
/// mean and `width_ms == 0`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rec {
    /// Unix milliseconds (a bucket's start).
    pub t_ms: u64,
    pub worker: u32,
    pub generation: u64,
    pub pid: i32,
    pub phase: u8,
    /// Samples in the bucket.
    pub count: u32,
    /// Bytes.
    pub private: u64,
    pub private_min: u64,
    pub private_max: u64,
    pub rss: u64,
    pub rss_max: u64,
    pub virtual_: u64,
    pub virtual_max: u64,
    /// CPU time of the worker since it started (its last value in a bucket).
    pub cpu_ms: u64,
    /// Requests since the worker started (last value).
    pub requests: u64,
    /// The worker's age (last value).
    pub uptime_ms: u64,
    /// 0 for a full record.
    pub width_ms: u64,
}

fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= *b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

fn kib(bytes: u64) -> u32 {
    (bytes / 1024).min(u32::MAX as u64) as u32
}

fn kib64(bytes: u64) -> u64 {
    bytes / 1024
}

struct W<'a>(&'a mut [u8]);
impl W<'_> {
    fn u16(&mut self, at: usize, v: u16) {
        self.0[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
}

fn r16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn r32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn r64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

impl Rec {
    /// Appends this record, encoded as `kind`, to `out`.
    pub fn encode(&self, kind: Kind, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + kind.record_len(), 0);
        let b = &mut out[start..];
        let mut w = W(b);
        w.u64(0, self.t_ms);
        w.u32(8, self.generation.min(u32::MAX as u64) as u32);
        w.u16(12, self.worker.min(u16::MAX as u32) as u16);
        w.0[16..20].copy_from_slice(&self.pid.to_le_bytes());
        match kind {
            Kind::Full => {
                w.0[14] = self.phase;
                w.u32(20, kib(self.private));
                w.u32(24, kib(self.rss));
                w.u32(28, (self.uptime_ms / 100).min(u32::MAX as u64) as u32);
                w.u64(32, kib64(self.virtual_));
                w.u64(40, self.requests);
                w.u64(48, self.cpu_ms);
            }
            Kind::Coarse => {
                w.u16(14, self.count.min(u16::MAX as u32) as u16);
                w.u32(20, kib(self.private_min));
                w.u32(24, kib(self.private_max));
                w.u32(28, kib(self.private));
                w.u32(32, kib(self.rss));
                w.u32(36, kib(self.rss_max));
                w.u64(40, kib64(self.virtual_));
                w.u64(48, kib64(self.virtual_max));
                w.u64(56, self.requests);
                w.u64(64, self.cpu_ms);
                w.u64(72, self.uptime_ms);
                w.u32(80, (self.width_ms / 1000) as u32);
                w.0[84] = self.phase;
            }
        }
        let len = kind.record_len();
        let sum = fnv1a(&b[..len - 4]);
        b[len - 4..].copy_from_slice(&sum.to_le_bytes());
    }

    /// Decodes one record; `None` if its checksum does not match.
    pub fn decode(kind: Kind, b: &[u8]) -> Option<Rec> {
        let len = kind.record_len();
        if b.len() < len || fnv1a(&b[..len - 4]) != r32(b, len - 4) {
            return None;
        }
        let mut r = Rec {
            t_ms: r64(b, 0),
            generation: r32(b, 8) as u64,
            worker: r16(b, 12) as u32,
            pid: i32::from_le_bytes(b[16..20].try_into().unwrap()),
            ..Rec::default()
        };
        match kind {
            Kind::Full => {
                r.phase = b[14];
                r.count = 1;
                r.private = r32(b, 20) as u64 * 1024;
                r.private_min = r.private;
                r.private_max = r.private;
                r.rss = r32(b, 24) as u64 * 1024;
                r.rss_max = r.rss;
                r.uptime_ms = r32(b, 28) as u64 * 100;
                r.virtual_ = r64(b, 32) * 1024;
                r.virtual_max = r.virtual_;
                r.requests = r64(b, 40);
                r.cpu_ms = r64(b, 48);
            }
            Kind::Coarse => {
                r.count = r16(b, 14) as u32;
                r.private_min = r32(b, 20) as u64 * 1024;
                r.private_max = r32(b, 24) as u64 * 1024;
                r.private = r32(b, 28) as u64 * 1024;
                r.rss = r32(b, 32) as u64 * 1024;
                r.rss_max = r32(b, 36) as u64 * 1024;
                r.virtual_ = r64(b, 40) * 1024;
                r.virtual_max = r64(b, 48) * 1024;
                r.requests = r64(b, 56);
                r.cpu_ms = r64(b, 64);
                r.uptime_ms = r64(b, 72);
                r.width_ms = r32(b, 80) as u64 * 1000;
                r.phase = b[84];
            }
        }
        Some(r)
    }
}

/// The 16 bytes every segment starts with.
pub fn header(kind: Kind) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..6].copy_from_slice(MAGIC);
    h[6] = VERSION;
    h[7] = kind.code();
    h[8..10].copy_from_slice(&(kind.record_len() as u16).to_le_bytes());
    h
}

fn header_ok(kind: Kind, bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN && bytes[..HEADER_LEN] == header(kind)
}

/// One segment file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub kind: Kind,
    /// From its name: the time of its first record (unix ms).
    pub start_ms: u64,
    pub path: PathBuf,
    pub bytes: u64,
}

/// `full-<ms>.bin` / `coarse-<ms>.bin` → kind and start.
pub fn parse_name(name: &str) -> Option<(Kind, u64)> {
    let stem = name.strip_suffix(".bin")?;
    let (prefix, ms) = stem.split_once('-')?;
    let kind = match prefix {
        "full" => Kind::Full,
        "coarse" => Kind::Coarse,
        _ => return None,
    };
    Some((kind, ms.parse().ok()?))
}

pub fn segment_path(dir: &Path, kind: Kind, start_ms: u64) -> PathBuf {
    dir.join(format!("{}-{start_ms:013}.bin", kind.prefix()))
}

/// The segments in `dir`, oldest first (by kind, then start). A missing directory
/// has none.
pub fn list(dir: &Path) -> io::Result<Vec<Segment>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for ent in entries.flatten() {
        let name = ent.file_name();
        let Some((kind, start_ms)) = name.to_str().and_then(parse_name) else {
            continue;
        };
        let Ok(meta) = ent.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        out.push(Segment {
            kind,
            start_ms,
            path: ent.path(),
            bytes: meta.len(),
        });
    }
    out.sort_by_key(|s| (s.kind, s.start_ms));
    Ok(out)
}

/// What reading one segment found.
#[derive(Debug, Default)]
pub struct SegmentRead {
    pub records: Vec<Rec>,
    /// Records whose checksum did not match (skipped).
    pub bad: usize,
    /// Bytes after the last whole record (an append cut short).
    pub torn: usize,
    /// The file does not start with a history header.
    pub foreign: bool,
}

/// Reads every record of `seg` whose time is in `from_ms..=to_ms`.
pub fn read_segment(seg: &Segment, from_ms: u64, to_ms: u64) -> io::Result<SegmentRead> {
    let mut bytes = Vec::with_capacity(seg.bytes as usize);
    fs::File::open(&seg.path)?.read_to_end(&mut bytes)?;
    Ok(decode_segment(seg.kind, &bytes, from_ms, to_ms))
}

pub fn decode_segment(kind: Kind, bytes: &[u8], from_ms: u64, to_ms: u64) -> SegmentRead {
    let mut out = SegmentRead::default();
    if bytes.is_empty() {
        return out;
    }
    if !header_ok(kind, bytes) {
        out.foreign = true;
        return out;
    }
    let body = &bytes[HEADER_LEN..];
    let len = kind.record_len();
    out.torn = body.len() % len;
    out.records.reserve(body.len() / len);
    for chunk in body.chunks_exact(len) {
        match Rec::decode(kind, chunk) {
            Some(r) if r.t_ms >= from_ms && r.t_ms <= to_ms => out.records.push(r),
            Some(_) => {}
            None => out.bad += 1,
        }
    }
    out
}

/// The length `seg` should have: its header and whole records only. `None` if it is
/// already whole (or is not a history file at all, which is left alone).
pub fn whole_length(seg: &Segment) -> io::Result<Option<u64>> {
    let mut head = [0u8; HEADER_LEN];
    let mut f = fs::File::open(&seg.path)?;
    let n = f.read(&mut head)?;
    if seg.bytes < HEADER_LEN as u64 {
        // Cut inside the header: nothing of it is usable.
        return Ok((n > 0 || seg.bytes > 0).then_some(0));
    }
    if !header_ok(seg.kind, &head) {
        return Ok(None);
    }
    let body = seg.bytes - HEADER_LEN as u64;
    let torn = body % seg.kind.record_len() as u64;
    Ok((torn != 0).then_some(seg.bytes - torn))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Rec {
        Rec {
            t_ms: 1_700_000_000_123,
            worker: 3,
            generation: 42,
            pid: 4321,
            phase: PHASE_SERVING,
            count: 1,
            private: 300 << 20,
            private_min: 300 << 20,
            private_max: 300 << 20,
            rss: 310 << 20,
            rss_max: 310 << 20,
            virtual_: 20 << 40,
            virtual_max: 20 << 40,
            cpu_ms: 123_456,
            requests: 9_876_543_210,
            uptime_ms: 86_400_000,
            width_ms: 0,
        }
    }

    #[test]
    fn records_round_trip() {
        let full = sample();
        let mut buf = Vec::new();
        full.encode(Kind::Full, &mut buf);
        assert_eq!(buf.len(), FULL_LEN);
        assert_eq!(Rec::decode(Kind::Full, &buf), Some(full));
        let coarse = Rec {
            count: 60,
            private_min: 200 << 20,
            private_max: 400 << 20,
            rss_max: 420 << 20,
            virtual_max: 21 << 40,
            width_ms: BUCKET_MS,
            ..full
        };
        let mut buf = Vec::new();
        coarse.encode(Kind::Coarse, &mut buf);
        assert_eq!(buf.len(), COARSE_LEN);
        assert_eq!(Rec::decode(Kind::Coarse, &buf), Some(coarse));
        // One flipped bit: the checksum says so.
        buf[30] ^= 4;
        assert_eq!(Rec::decode(Kind::Coarse, &buf), None);
    }

    #[test]
    fn a_segment_with_a_torn_tail_and_a_bad_record_reads_what_is_whole() {
        let mut bytes = header(Kind::Full).to_vec();
        for i in 0..3 {
            Rec {
                t_ms: 1000 + i,
                ..sample()
            }
            .encode(Kind::Full, &mut bytes);
        }
        bytes[HEADER_LEN + FULL_LEN + 5] ^= 1;
        bytes.extend_from_slice(&[1, 2, 3]);
        let read = decode_segment(Kind::Full, &bytes, 0, u64::MAX);
        assert_eq!(read.records.len(), 2);
        assert_eq!((read.bad, read.torn, read.foreign), (1, 3, false));
        let read = decode_segment(Kind::Full, b"not a history file at all", 0, u64::MAX);
        assert!(read.foreign);
        assert!(decode_segment(Kind::Coarse, &bytes, 0, u64::MAX).foreign);
    }

    #[test]
    fn names() {
        let p = segment_path(Path::new("/x"), Kind::Coarse, 1_700_000_000_000);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_name(name), Some((Kind::Coarse, 1_700_000_000_000)));
        assert_eq!(parse_name("full-12.bin"), Some((Kind::Full, 12)));
        assert_eq!(parse_name("full-x.bin"), None);
        assert_eq!(parse_name("other-1.bin"), None);
    }
}
