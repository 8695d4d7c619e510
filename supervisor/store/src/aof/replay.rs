//! Reading the log back at start.
//!
//! The log is replayed record by record into a fresh keyspace. A record cut short
//! at the end (the supervisor was killed mid-write) is the expected way for a log
//! to end badly: the file is truncated to its last whole record with a warning. A
//! record that is not one of ours, or garbage, is handled the same way, except
//! that the cut-off bytes are first saved beside the log for inspection. Either
//! way the store starts: refusing to start would lose every session at once.
//! Keys whose absolute expiry has passed are dropped after the replay.

use std::fs::File;
use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::super::error::StoreError;
use super::super::keyspace::Keyspace;
use super::super::resp::{parse_i64, parse_request, FrameLimits, Parse, MAX_BULK_HARD};

/// What a replay found; kept on the store handle for the supervisor to show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Records applied.
    pub records: u64,
    /// Keys alive after the replay.
    pub keys: u64,
    /// Keys dropped because their expiry passed while the store was down.
    pub expired: u64,
    /// Set when the log's tail was cut off.
    pub truncated: Option<Truncation>,
}

/// One sentence for the supervisor's log: `loaded 310 keys from 1204 log records
/// (12 had expired while the store was down)`, plus the cut, if there was one.
impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.records == 0 && self.truncated.is_none() {
            f.write_str("nothing to load (no log yet, or an empty one)")?;
        } else {
            write!(
                f,
                "loaded {} keys from {} log records",
                self.keys, self.records
            )?;
            if self.expired > 0 {
                write!(
                    f,
                    " ({} had expired while the store was down)",
                    self.expired
                )?;
            }
        }
        if let Some(cut) = &self.truncated {
            write!(f, "; {cut}")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for Truncation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the log was cut at byte {} ({} bytes dropped: {})",
            self.at, self.dropped, self.reason
        )?;
        if let Some(saved) = &self.saved_to {
            write!(f, ", the dropped bytes saved to {}", saved.display())?;
        }
        Ok(())
    }
}

/// A cut at the end of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The log now ends here (the end of the last whole record).
    pub at: u64,
    /// Bytes cut off.
    pub dropped: u64,
    /// Why: a torn last record, or what was wrong with the bytes.
    pub reason: String,
    /// Where the cut-off bytes were saved, when they were not just a torn record.
    pub saved_to: Option<PathBuf>,
}

const LOG_LIMITS: FrameLimits = FrameLimits {
    max_bulk: MAX_BULK_HARD,
    max_args: 16,
    max_frame: usize::MAX,
};
const READ_CHUNK: usize = 1 << 20;

/// Replays the log at `path` (if any) into `ks`, truncating a bad tail.
pub(crate) fn replay(path: &Path, ks: &mut Keyspace, now: u64) -> Result<LoadReport, StoreError> {
    let io_err = |source| StoreError::Log {
        path: path.to_owned(),
        source,
    };
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!("no log at {} yet: starting empty", path.display());
            return Ok(LoadReport::default());
        }
        Err(e) => return Err(io_err(e)),
    };
    let started = std::time::Instant::now();
    tracing::debug!("replaying the log {}", path.display());
    let mut report = LoadReport::default();
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut args: Vec<Range<usize>> = Vec::new();
    // File offset of buf[0].
    let mut base: u64 = 0;
    let mut eof = false;
    let mut need = 1;
    let bad: Option<String> = loop {
        if buf.len() < need && !eof {
            let old = buf.len();
            let want = need.max(old + READ_CHUNK);
            buf.resize(want, 0);
            let n = read_full(&mut file, &mut buf[old..]).map_err(io_err)?;
            buf.truncate(old + n);
            eof = n < want - old;
            continue;
        }
        let mut pos = 0;
        let mut stop = None;
        loop {
            match parse_request(&buf[pos..], &mut args, &LOG_LIMITS) {
                Parse::Complete { consumed } => {
                    let record = &buf[pos..pos + consumed];
                    let words: Vec<&[u8]> = args.iter().map(|r| &record[r.clone()]).collect();
                    if let Err(why) = apply(ks, &words, now) {
                        stop = Some(Some(why));
                        break;
                    }
                    report.records += 1;
                    pos += consumed;
                }
                Parse::Incomplete { need: n } => {
                    need = n;
                    break;
                }
                Parse::Invalid(why) => {
                    stop = Some(Some(format!("not a valid record ({why})")));
                    break;
                }
            }
        }
        buf.drain(..pos);
        base += pos as u64;
        if let Some(reason) = stop {
            break reason;
        }
        if eof && buf.len() < need {
            break if buf.is_empty() {
                None
            } else {
                Some(String::new())
            };
        }
    };
    if let Some(reason) = bad {
        let file_len = file.metadata().map_err(io_err)?.len();
        let dropped = file_len - base;
        let (reason, saved_to) = if reason.is_empty() {
            (
                "the last record is incomplete (torn write)".to_owned(),
                None,
            )
        } else {
            (reason, save_tail(path, &mut file, base))
        };
        file.set_len(base).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        tracing::warn!(
            "{}: {reason}; truncated the log at byte {base}, dropping {dropped} bytes{}",
            path.display(),
            saved_to
                .as_ref()
                .map(|p| format!(" (saved to {})", p.display()))
                .unwrap_or_default()
        );
        report.truncated = Some(Truncation {
            at: base,
            dropped,
            reason,
            saved_to,
        });
    }
    for db in &mut ks.dbs {
        report.expired += db.purge(now, usize::MAX) as u64;
    }
    report.keys = ks.keys() as u64;
    tracing::debug!(
        "replayed {} in {} ms: {report}",
        path.display(),
        started.elapsed().as_millis()
    );
    Ok(report)
}

fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Copies the bytes from `from` to the end into `<log>.corrupt-<unix seconds>`.
fn save_tail(path: &Path, file: &mut File, from: u64) -> Option<PathBuf> {
    use std::io::{Seek, SeekFrom};
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let mut name = path.file_name()?.to_owned();
    name.push(format!(".corrupt-{stamp}"));
    let target = path.with_file_name(name);
    let mut out = File::create(&target).ok()?;
    file.seek(SeekFrom::Start(from)).ok()?;
    std::io::copy(file, &mut out).ok()?;
    out.flush().ok()?;
    Some(target)
}

fn apply(ks: &mut Keyspace, words: &[&[u8]], now: u64) -> Result<(), String> {
    let bad = || {
        let shown: Vec<String> = words
            .iter()
            .take(3)
            .map(|w| String::from_utf8_lossy(&w[..w.len().min(40)]).into_owned())
            .collect();
        format!("unknown record '{}'", shown.join(" "))
    };
    let (op, app) = match words {
        [op, app, ..] => (*op, std::str::from_utf8(app).map_err(|_| bad())?),
        _ => return Err(bad()),
    };
    let db = ks.db_id(app);
    let db = &mut ks.dbs[db];
    let time = |w: &[u8]| {
        parse_i64(w)
            .filter(|&t| t > 0)
            .map(|t| t as u64)
            .ok_or_else(bad)
    };
    match (op, &words[2..]) {
        (b"SET", [key, value]) => db.set(key, value, 0, now),
        (b"SET", [key, value, b"PXAT", at]) => db.set(key, value, time(at)?, now),
        (b"DEL", [key]) => {
            db.remove(key, now);
        }
        (b"PEXPIREAT", [key, at]) => {
            db.set_expiry(key, time(at)?, now);
        }
        (b"PERSIST", [key]) => {
            db.set_expiry(key, 0, now);
        }
        (b"FLUSHDB", []) => db.flush(),
        _ => return Err(bad()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_report_reads_as_a_sentence() {
        assert_eq!(
            LoadReport::default().to_string(),
            "nothing to load (no log yet, or an empty one)"
        );
        let report = LoadReport {
            records: 1204,
            keys: 310,
            expired: 12,
            truncated: Some(Truncation {
                at: 4096,
                dropped: 17,
                reason: "the last record is incomplete (torn write)".to_owned(),
                saved_to: None,
            }),
        };
        assert_eq!(
            report.to_string(),
            "loaded 310 keys from 1204 log records (12 had expired while the store was down); \
             the log was cut at byte 4096 (17 bytes dropped: the last record is incomplete \
             (torn write))"
        );
    }
}
