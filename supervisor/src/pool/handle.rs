//! The address of a pool: each method queues a command and awaits its reply.

use tokio::sync::{mpsc, oneshot};

use super::{AppStatus, PoolCommand};
use crate::reason::RecycleReason;

/// Reply to a command: a line for the user, or an error for the user.
pub type Reply = Result<String, String>;

/// The address of a pool.
#[derive(Debug, Clone)]
pub struct PoolHandle {
    pub name: String,
    pub(super) tx: mpsc::UnboundedSender<PoolCommand>,
}

impl PoolHandle {
    pub fn send(&self, cmd: PoolCommand) -> bool {
        self.tx.send(cmd).is_ok()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> PoolCommand) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        if !self.send(make(tx)) {
            return None;
        }
        rx.await.ok()
    }

    fn gone(&self) -> Reply {
        Err(format!("app {:?} is shutting down", self.name))
    }

    pub async fn recycle(&self, reason: RecycleReason) -> Reply {
        self.ask(|done| PoolCommand::Recycle {
            reason,
            slot: None,
            done: Some(done),
        })
        .await
        .unwrap_or_else(|| self.gone())
    }

    /// Queues a recycle without waiting for it (triggers use this).
    pub fn request_recycle(&self, reason: RecycleReason) {
        self.send(PoolCommand::Recycle {
            reason,
            slot: None,
            done: None,
        });
    }

    pub async fn start(&self) -> Reply {
        self.ask(|done| PoolCommand::Start { done })
            .await
            .unwrap_or_else(|| self.gone())
    }

    pub async fn stop(&self) -> Reply {
        self.ask(|done| PoolCommand::Stop { done })
            .await
            .unwrap_or_else(|| self.gone())
    }

    pub async fn status(&self) -> Option<AppStatus> {
        self.ask(|reply| PoolCommand::Status { reply }).await
    }

    /// Where the app's history is, and its limits (`None` if the pool is gone).
    pub async fn history_info(&self) -> Option<super::HistoryInfo> {
        self.ask(|reply| PoolCommand::HistoryInfo { reply }).await
    }

    pub async fn shutdown(&self) {
        let _ = self.ask(|done| PoolCommand::Shutdown { done }).await;
    }
}
