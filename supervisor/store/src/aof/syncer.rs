//! `everysec`: the once-a-second `fdatasync`, on a thread of its own.
//!
//! Syncing a second's worth of a busy log can take longer than the second
//! (hundreds of MiB of dirty pages): done by the writer thread, it stopped all
//! appends meanwhile, so the queue backed up and connections waited on
//! [`MAX_BACKLOG`](super::MAX_BACKLOG). Here the writer hands over a duplicate
//! of the file descriptor and the number of bytes written so far, and goes on
//! appending; this thread syncs, then publishes those bytes as durable. While a
//! sync runs, the writer does not ask for another (Redis likewise skips an
//! everysec fsync while the previous one is still running).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::watch;

use super::status::{publish_durable, Health, LogStatus};

/// How long a failed sync waits before the next attempt.
const RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The writer's side.
pub(super) struct Syncer {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    /// The file to sync and the bytes written to it; None when there is nothing
    /// to do. `stop` ends the thread.
    request: Mutex<(Option<(File, u64)>, bool)>,
    wake: Condvar,
    busy: AtomicBool,
}

impl Syncer {
    pub fn start(
        path: PathBuf,
        status: Arc<LogStatus>,
        durable: Arc<watch::Sender<u64>>,
    ) -> std::io::Result<Syncer> {
        let shared = Arc::new(Shared {
            request: Mutex::new((None, false)),
            wake: Condvar::new(),
            busy: AtomicBool::new(false),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("appvisor-store-sync".into())
                .spawn(move || run(&shared, &path, &status, &durable))?
        };
        Ok(Syncer {
            shared,
            thread: Some(thread),
        })
    }

    /// Asks for a sync of `file` covering `written` bytes of records. False if
    /// the previous sync still runs (or the descriptor could not be duplicated):
    /// ask again later.
    pub fn request(&self, file: &File, written: u64) -> bool {
        if self.shared.busy.swap(true, Ordering::AcqRel) {
            return false;
        }
        let Ok(file) = file.try_clone() else {
            self.shared.busy.store(false, Ordering::Release);
            return false;
        };
        lock(&self.shared).0 = Some((file, written));
        self.shared.wake.notify_one();
        true
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        lock(&self.shared).1 = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, (Option<(File, u64)>, bool)> {
    shared.request.lock().unwrap_or_else(|e| e.into_inner())
}

fn run(shared: &Shared, path: &Path, status: &LogStatus, durable: &watch::Sender<u64>) {
    let mut health = Health::default();
    loop {
        let (file, written) = {
            let mut request = lock(shared);
            loop {
                if request.1 {
                    return;
                }
                if let Some(job) = request.0.take() {
                    break job;
                }
                request = shared.wake.wait(request).unwrap_or_else(|e| e.into_inner());
            }
        };
        // A failed sync refuses writes (so nothing new would ask for another):
        // retry it each second until it succeeds or the store stops.
        loop {
            match file.sync_data() {
                Ok(()) => {
                    health.recovered(status, path);
                    publish_durable(durable, written);
                    break;
                }
                Err(e) => health.failed(status, &format!("cannot sync {}: {e}", path.display())),
            }
            let request = lock(shared);
            let (request, _) = shared
                .wake
                .wait_timeout(request, RETRY)
                .unwrap_or_else(|e| e.into_inner());
            if request.1 {
                return;
            }
        }
        shared.busy.store(false, Ordering::Release);
    }
}
