//! Publish/subscribe within one app's namespace, and the keyspace notifications
//! that announce an expired key (how a session's end is seen out of process).
//!
//! Each subscribed connection owns a bounded queue of [`Push`]es. Publishing never
//! waits: a subscriber whose queue is full is marked overflowed and dropped by its
//! own task, as Redis drops a pub/sub client past `client-output-buffer-limit`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::glob;

/// Messages a subscriber may have queued before it is considered stuck.
pub(crate) const QUEUE_DEPTH: usize = 16 * 1024;

/// The channel that carries the name of every key that expires (`E` + `x` events).
pub(crate) const EXPIRED_EVENT_CHANNEL: &[u8] = b"__keyevent@0__:expired";
/// Prefix of the per-key channel that receives the event name `expired`.
pub(crate) const KEYSPACE_CHANNEL_PREFIX: &[u8] = b"__keyspace@0__:";

/// One message on its way to a subscriber.
#[derive(Debug, Clone)]
pub(crate) struct Push {
    /// The pattern it matched, for `pmessage`; None for `message`.
    pub pattern: Option<Bytes>,
    pub channel: Bytes,
    pub payload: Bytes,
}

/// A connection's end of its message queue, as registered with channels.
#[derive(Debug, Clone)]
pub(crate) struct Subscriber {
    pub id: u64,
    pub tx: mpsc::Sender<Push>,
    /// Set when a message could not be queued; the connection closes itself.
    pub overflowed: Arc<AtomicBool>,
}

impl Subscriber {
    fn deliver(&self, push: Push) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(push) {
            self.overflowed.store(true, Ordering::Relaxed);
        }
    }
}

/// The channels and patterns of one app.
#[derive(Debug, Default)]
pub(crate) struct PubSub {
    channels: HashMap<Box<[u8]>, Vec<Subscriber>>,
    patterns: Vec<(Bytes, Subscriber)>,
}

impl PubSub {
    /// Whether anyone listens at all (checked before building any message).
    pub fn is_active(&self) -> bool {
        !self.channels.is_empty() || !self.patterns.is_empty()
    }

    /// Queues `payload` for every subscriber of `channel` and every matching
    /// pattern; returns how many received it.
    pub fn publish(&self, channel: &[u8], payload: &[u8]) -> usize {
        if !self.is_active() {
            return 0;
        }
        let mut receivers = 0;
        let mut message: Option<(Bytes, Bytes)> = None;
        let mut build = || {
            message
                .get_or_insert_with(|| {
                    (
                        Bytes::copy_from_slice(channel),
                        Bytes::copy_from_slice(payload),
                    )
                })
                .clone()
        };
        if let Some(subs) = self.channels.get(channel) {
            for sub in subs {
                let (channel, payload) = build();
                sub.deliver(Push {
                    pattern: None,
                    channel,
                    payload,
                });
                receivers += 1;
            }
        }
        for (pattern, sub) in &self.patterns {
            if glob::matches(pattern, channel) {
                let (channel, payload) = build();
                sub.deliver(Push {
                    pattern: Some(pattern.clone()),
                    channel,
                    payload,
                });
                receivers += 1;
            }
        }
        receivers
    }

    /// Announces that `key` expired on both notification channels.
    pub fn publish_expired(&self, key: &[u8]) {
        if !self.is_active() {
            return;
        }
        self.publish(EXPIRED_EVENT_CHANNEL, key);
        let mut channel = Vec::with_capacity(KEYSPACE_CHANNEL_PREFIX.len() + key.len());
        channel.extend_from_slice(KEYSPACE_CHANNEL_PREFIX);
        channel.extend_from_slice(key);
        self.publish(&channel, b"expired");
    }

    /// Returns false if `sub` was already subscribed to `channel`.
    pub fn subscribe(&mut self, channel: &[u8], sub: &Subscriber) -> bool {
        let subs = self.channels.entry(channel.into()).or_default();
        if subs.iter().any(|s| s.id == sub.id) {
            return false;
        }
        subs.push(sub.clone());
        true
    }

    pub fn unsubscribe(&mut self, channel: &[u8], id: u64) -> bool {
        let Some(subs) = self.channels.get_mut(channel) else {
            return false;
        };
        let before = subs.len();
        subs.retain(|s| s.id != id);
        let removed = subs.len() != before;
        if subs.is_empty() {
            self.channels.remove(channel);
        }
        removed
    }

    pub fn psubscribe(&mut self, pattern: &[u8], sub: &Subscriber) -> bool {
        if self
            .patterns
            .iter()
            .any(|(p, s)| s.id == sub.id && p.as_ref() == pattern)
        {
            return false;
        }
        self.patterns
            .push((Bytes::copy_from_slice(pattern), sub.clone()));
        true
    }

    pub fn punsubscribe(&mut self, pattern: &[u8], id: u64) -> bool {
        let before = self.patterns.len();
        self.patterns
            .retain(|(p, s)| !(s.id == id && p.as_ref() == pattern));
        self.patterns.len() != before
    }
}
