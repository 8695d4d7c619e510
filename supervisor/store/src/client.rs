//! What the store remembers about one connection between its requests: who it
//! logged in as, its protocol version, an open MULTI, WATCHed keys, subscriptions.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::args::Args;
use super::keyspace::Keyspace;
use super::pubsub::{Push, Subscriber, QUEUE_DEPTH};
use super::seat::Seat;

/// A request copied out of the read buffer to run later, at EXEC.
#[derive(Debug)]
pub(crate) struct Queued {
    buf: Vec<u8>,
    ranges: Vec<Range<usize>>,
}

impl Queued {
    pub fn copy(args: Args<'_>) -> Queued {
        let mut buf = Vec::new();
        let mut ranges = Vec::with_capacity(args.len());
        for word in args.rest(0) {
            ranges.push(buf.len()..buf.len() + word.len());
            buf.extend_from_slice(word);
        }
        Queued { buf, ranges }
    }

    /// What it holds in memory, roughly: its bytes and their ranges.
    pub fn size(&self) -> usize {
        self.buf.len() + self.ranges.len() * std::mem::size_of::<Range<usize>>()
    }

    pub fn args(&self) -> Args<'_> {
        Args {
            buf: &self.buf,
            ranges: &self.ranges,
        }
    }
}

/// An open MULTI.
#[derive(Debug, Default)]
pub(crate) struct Multi {
    pub queued: Vec<Queued>,
    /// [`Queued::size`] of all of them (bounded by max_output).
    pub bytes: usize,
    /// A request was refused while queueing: EXEC will answer EXECABORT.
    pub failed: bool,
}

#[derive(Debug)]
pub(crate) struct Client {
    pub id: u64,
    /// Where it connected from, for log lines: `tcp 10.0.0.5:41234`, `unix socket`.
    pub peer: String,
    /// The app (namespace) this connection is logged in as.
    pub db: Option<usize>,
    /// The app a per-app socket logs its connections into (RESET returns there).
    pub socket_db: Option<usize>,
    pub resp3: bool,
    pub name: Option<Vec<u8>>,
    pub multi: Option<Multi>,
    /// Set by any change to a WATCHed key; EXEC then aborts.
    pub watch_dirty: Arc<AtomicBool>,
    pub watching: Vec<(usize, Box<[u8]>)>,
    /// Subscriptions live in one namespace (the one logged into when made).
    pub sub_db: usize,
    pub channels: HashSet<Box<[u8]>>,
    pub patterns: HashSet<Box<[u8]>>,
    /// Created on the first SUBSCRIBE; the connection task drains `inbox`.
    pub subscriber: Option<Subscriber>,
    pub inbox: Option<mpsc::Receiver<Push>>,
    /// QUIT: close once the replies so far are written.
    pub closing: bool,
    /// Its place in max_clients or, until it logs in, max_anonymous.
    pub seat: Seat,
}

impl Client {
    pub fn new(id: u64, db: Option<usize>, seat: Seat) -> Client {
        Client {
            id,
            peer: String::from("unix socket"),
            db,
            socket_db: db,
            resp3: false,
            name: None,
            multi: None,
            watch_dirty: Arc::new(AtomicBool::new(false)),
            watching: Vec::new(),
            sub_db: 0,
            channels: HashSet::new(),
            patterns: HashSet::new(),
            subscriber: None,
            inbox: None,
            closing: false,
            seat,
        }
    }

    pub fn subscriptions(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }

    pub fn flag_multi_error(&mut self) {
        if let Some(multi) = &mut self.multi {
            multi.failed = true;
        }
    }

    /// This connection's queue handle, created on first use.
    pub fn subscriber(&mut self) -> Subscriber {
        if let Some(sub) = &self.subscriber {
            return sub.clone();
        }
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let sub = Subscriber {
            id: self.id,
            tx,
            overflowed: Arc::new(AtomicBool::new(false)),
        };
        self.subscriber = Some(sub.clone());
        self.inbox = Some(rx);
        sub
    }

    pub fn overflowed(&self) -> bool {
        self.subscriber
            .as_ref()
            .is_some_and(|s| s.overflowed.load(Ordering::Relaxed))
    }

    pub fn unwatch_all(&mut self, ks: &mut Keyspace) {
        for (db, key) in self.watching.drain(..) {
            if let Some(db) = ks.dbs.get_mut(db) {
                db.unwatch(&key, &self.watch_dirty);
            }
        }
        self.watch_dirty.store(false, Ordering::Relaxed);
    }

    pub fn unsubscribe_all(&mut self, ks: &mut Keyspace) {
        if let Some(db) = ks.dbs.get_mut(self.sub_db) {
            for channel in self.channels.drain() {
                db.pubsub.unsubscribe(&channel, self.id);
            }
            for pattern in self.patterns.drain() {
                db.pubsub.punsubscribe(&pattern, self.id);
            }
        }
    }

    /// Forgets everything this connection registered in the keyspace (on close,
    /// RESET, or a login as another app).
    pub fn detach(&mut self, ks: &mut Keyspace) {
        self.unwatch_all(ks);
        self.unsubscribe_all(ks);
        self.multi = None;
    }
}
