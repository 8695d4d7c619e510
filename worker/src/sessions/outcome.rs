//! What a commit ([`CommitOutcome`]) and a flush ([`FlushReport`]) did: the
//! results the memory table, the store and the handoff produce and
//! [`Sessions`](super::Sessions) returns.

use std::time::Duration;

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The session's version after the commit.
    pub version: u64,
    /// False when there was nothing to write.
    pub written: bool,
    /// True when another request had committed since this one loaded, and
    /// this request's changes were replayed onto that newer copy.
    pub merged: bool,
    /// Keys both requests set to different values: this request's value
    /// won, the other one's was overwritten. Empty in the normal case.
    pub conflicts: Vec<String>,
    /// Optimistic rounds it took (1 when nobody raced; 0 when not written).
    pub attempts: u32,
}

impl CommitOutcome {
    pub(crate) fn written(
        version: u64,
        merged: bool,
        conflicts: Vec<String>,
        attempts: u32,
    ) -> Self {
        CommitOutcome {
            version,
            written: true,
            merged,
            conflicts,
            attempts,
        }
    }
}

/// What a flush of dirty sessions did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Sessions written to the store.
    pub flushed: usize,
    /// Of those, how many had been changed in the store by another writer
    /// and were merged.
    pub merged: usize,
    /// Keys overwritten in conflict, summed over all sessions.
    pub conflicts: usize,
    /// Wall time of the flush.
    pub elapsed: Duration,
}

impl FlushReport {
    /// Adds `other`'s counts and time to these.
    pub(crate) fn add(&mut self, other: &FlushReport) {
        self.flushed += other.flushed;
        self.merged += other.merged;
        self.conflicts += other.conflicts;
        self.elapsed += other.elapsed;
    }
}
