//! Who may hold a connection: clients up to `max_clients`, and TCP connections
//! that have not logged in yet in a small quota of their own.
//!
//! With `[store] tcp` on, anyone who can reach the port can open connections.
//! Counted against `max_clients` (and the process's descriptors), a stranger's
//! idle connections would lock the apps out of their own store. So a TCP
//! connection that has not logged in takes an *anonymous* seat, from a quota of
//! `max_anonymous`, and must log in within `auth_timeout` (the connection task
//! enforces that); a successful AUTH moves it to a client seat, bounded by
//! `max_clients`. Unix sockets are reachable by the store's owner only (mode
//! 0600): their connections take a client seat at once, as before, so a local
//! burst of connections (`redis-benchmark -c 50`) is never refused for
//! arriving faster than they log in.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

/// The two counts and their bounds, shared by every connection.
#[derive(Debug)]
pub(crate) struct Seats {
    clients: AtomicU32,
    anonymous: AtomicU32,
    pub max_clients: u32,
    pub max_anonymous: u32,
    /// The anonymous quota was found full and said so; cleared when a seat is
    /// free again, so a flood is reported once, not once per connection.
    full_reported: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SeatKind {
    Client,
    Anonymous,
}

/// Why a connection got no seat: the line it is sent before it is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    MaxClients,
    MaxAnonymous,
}

impl Refusal {
    pub fn reply(self) -> &'static str {
        match self {
            Refusal::MaxClients => "ERR max number of clients reached",
            Refusal::MaxAnonymous => {
                "ERR max number of unauthenticated clients reached; log in (AUTH) right after connecting"
            }
        }
    }
}

impl Seats {
    pub fn new(max_clients: u32, max_anonymous: u32) -> Arc<Seats> {
        Arc::new(Seats {
            clients: AtomicU32::new(0),
            anonymous: AtomicU32::new(0),
            max_clients,
            max_anonymous,
            full_reported: AtomicBool::new(false),
        })
    }

    pub fn clients(&self) -> u32 {
        self.clients.load(Ordering::Relaxed)
    }

    pub fn anonymous(&self) -> u32 {
        self.anonymous.load(Ordering::Relaxed)
    }

    /// A seat for a new connection. An anonymous one is refused too when no
    /// client seat is free: it could never log in.
    pub fn take(self: &Arc<Self>, kind: SeatKind) -> Result<Seat, Refusal> {
        if kind == SeatKind::Anonymous && self.clients() >= self.max_clients {
            return Err(Refusal::MaxClients);
        }
        let (count, max, refusal) = self.count(kind);
        if count.fetch_add(1, Ordering::Relaxed) >= max {
            count.fetch_sub(1, Ordering::Relaxed);
            if kind == SeatKind::Anonymous && !self.full_reported.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "{max} connections are waiting to log in (max_anonymous): refusing more until they log in or time out"
                );
            }
            return Err(refusal);
        }
        if kind == SeatKind::Anonymous {
            self.full_reported.store(false, Ordering::Relaxed);
        }
        Ok(Seat {
            seats: self.clone(),
            kind,
        })
    }

    fn count(&self, kind: SeatKind) -> (&AtomicU32, u32, Refusal) {
        match kind {
            SeatKind::Client => (&self.clients, self.max_clients, Refusal::MaxClients),
            SeatKind::Anonymous => (&self.anonymous, self.max_anonymous, Refusal::MaxAnonymous),
        }
    }
}

/// One connection's seat, given back when dropped.
#[derive(Debug)]
pub(crate) struct Seat {
    seats: Arc<Seats>,
    kind: SeatKind,
}

impl Seat {
    pub fn is_anonymous(&self) -> bool {
        self.kind == SeatKind::Anonymous
    }

    /// Moves an anonymous connection that just logged in to a client seat.
    /// Err if none is free (the connection keeps its anonymous seat).
    pub fn promote(&mut self) -> Result<(), Refusal> {
        if self.kind == SeatKind::Client {
            return Ok(());
        }
        let client = self.seats.take(SeatKind::Client)?;
        // The new seat's count is kept, this seat's anonymous one given back.
        std::mem::forget(client);
        self.seats.anonymous.fetch_sub(1, Ordering::Relaxed);
        self.kind = SeatKind::Client;
        Ok(())
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let (count, _, _) = self.seats.count(self.kind);
        count.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_are_separate_and_seats_come_back() {
        let seats = Seats::new(2, 1);
        let mut first = seats.take(SeatKind::Anonymous).unwrap();
        assert_eq!(
            seats.take(SeatKind::Anonymous).unwrap_err(),
            Refusal::MaxAnonymous
        );
        let _app = seats.take(SeatKind::Client).unwrap();
        first.promote().unwrap();
        assert_eq!((seats.clients(), seats.anonymous()), (2, 0));
        assert_eq!(
            seats.take(SeatKind::Anonymous).unwrap_err(),
            Refusal::MaxClients,
            "no logged-in seat is free"
        );
        drop(first);
        let mut third = seats.take(SeatKind::Anonymous).unwrap();
        assert!(third.is_anonymous());
        let _other = seats.take(SeatKind::Client).unwrap();
        assert_eq!(third.promote().unwrap_err(), Refusal::MaxClients);
        assert!(third.is_anonymous());
        drop(third);
        assert_eq!((seats.clients(), seats.anonymous()), (2, 0));
    }
}
