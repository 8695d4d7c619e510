//! Worker output: per-app log files with size-based rotation, and the terminal.
//!
//! Each worker's stdout and stderr are pipes read here line by line. Every line is
//! appended to `<state_dir>/logs/<app>.log` (stderr lines marked `!`), and — when
//! the supervisor runs in the foreground — printed as `app[pid] line`. The last
//! lines of stderr are kept per worker so a `startup_failed` or `crashed` event can
//! say what the worker said before it died.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe;

/// Lines of stderr kept per worker for events.
pub const TAIL_LINES: usize = 10;
/// A longer line is cut (and the rest still logged as further lines).
const MAX_LINE: usize = 16 * 1024;

/// The log file of one app, shared by all its workers.
#[derive(Clone)]
pub struct AppLog {
    inner: Arc<Mutex<LogFile>>,
    app: Arc<str>,
    echo: bool,
}

impl std::fmt::Debug for AppLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AppLog({})", self.app)
    }
}

struct LogFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max_size: u64,
    keep: u32,
}

impl LogFile {
    fn write_line(&mut self, line: &[u8]) {
        if self.file.is_none() {
            self.reopen();
        }
        let Some(f) = self.file.as_mut() else {
            return;
        };
        if f.write_all(line).is_ok() {
            self.size += line.len() as u64;
        }
        if self.size >= self.max_size {
            self.rotate();
        }
    }

    fn reopen(&mut self) {
        match OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            Ok(f) => {
                self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
                self.file = Some(f);
            }
            Err(e) => tracing::error!(
                "Cannot open the app log {}: {e}; its worker output is lost until it can be.",
                self.path.display()
            ),
        }
    }

    /// `app.log` → `app.log.1` → … → `app.log.<keep>` (dropped).
    fn rotate(&mut self) {
        self.file = None;
        for i in (1..self.keep).rev() {
            let _ = std::fs::rename(numbered(&self.path, i), numbered(&self.path, i + 1));
        }
        if self.keep > 0 {
            let _ = std::fs::rename(&self.path, numbered(&self.path, 1));
        } else {
            let _ = std::fs::remove_file(&self.path);
        }
        self.reopen();
    }
}

fn numbered(path: &Path, i: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

impl AppLog {
    pub fn open(dir: &Path, app: &str, max_size: u64, keep: u32, echo: bool) -> io::Result<AppLog> {
        std::fs::create_dir_all(dir)?;
        let mut file = LogFile {
            path: dir.join(format!("{app}.log")),
            file: None,
            size: 0,
            max_size: max_size.max(4096),
            keep,
        };
        file.reopen();
        Ok(AppLog {
            inner: Arc::new(Mutex::new(file)),
            app: Arc::from(app),
            echo,
        })
    }

    pub fn path(&self) -> PathBuf {
        self.inner.lock().unwrap().path.clone()
    }

    /// Reads a worker's stdout and stderr until both close. The stderr tail is
    /// kept in `tail`.
    pub fn attach(
        &self,
        pid: i32,
        stdout: OwnedFd,
        stderr: OwnedFd,
        tail: Arc<Mutex<VecDeque<String>>>,
    ) {
        for (fd, is_err) in [(stdout, false), (stderr, true)] {
            let log = self.clone();
            let tail = tail.clone();
            let Ok(rx) = pipe::Receiver::from_owned_fd(fd) else {
                continue;
            };
            tokio::spawn(async move {
                let mut reader = BufReader::with_capacity(8192, rx);
                let mut buf = Vec::with_capacity(256);
                loop {
                    buf.clear();
                    match read_line_bounded(&mut reader, &mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    while matches!(buf.last(), Some(b'\n' | b'\r')) {
                        buf.pop();
                    }
                    let text = String::from_utf8_lossy(&buf);
                    if is_err {
                        let mut t = tail.lock().unwrap();
                        if t.len() == TAIL_LINES {
                            t.pop_front();
                        }
                        t.push_back(text.to_string());
                    }
                    log.line(pid, is_err, &text);
                }
            });
        }
    }

    fn line(&self, pid: i32, is_err: bool, text: &str) {
        let time = crate::events::now_rfc3339();
        let mark = if is_err { '!' } else { ' ' };
        let record = format!("{time} [{pid}]{mark} {text}\n");
        self.inner.lock().unwrap().write_line(record.as_bytes());
        if self.echo {
            let line = format!("{}[{pid}] {text}\n", self.app);
            let _ = io::stdout().lock().write_all(line.as_bytes());
        }
    }
}

async fn read_line_bounded<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<usize> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(buf.len());
        }
        let room = MAX_LINE - buf.len();
        let take = available.len().min(room);
        if let Some(i) = available[..take].iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(&available[..=i]);
            reader.consume(i + 1);
            return Ok(buf.len());
        }
        buf.extend_from_slice(&available[..take]);
        reader.consume(take);
        if buf.len() >= MAX_LINE {
            return Ok(buf.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_rotates_by_size_and_keeps_n_files() {
        let dir = std::env::temp_dir().join(format!("appvisor-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut f = LogFile {
            path: dir.join("web.log"),
            file: None,
            size: 0,
            max_size: 4096,
            keep: 2,
        };
        let line = [b'x'; 1023];
        for _ in 0..20 {
            f.write_line(&line);
            f.write_line(b"\n");
        }
        assert!(dir.join("web.log").exists());
        assert!(dir.join("web.log.1").exists());
        assert!(dir.join("web.log.2").exists());
        assert!(
            !dir.join("web.log.3").exists(),
            "only log_keep rotated files are kept"
        );
        assert!(std::fs::metadata(dir.join("web.log.1")).unwrap().len() >= 4096);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
