//! One client connection: read, run every whole request in the buffer under one
//! lock of the keyspace, write all the replies at once.
//!
//! That batching is what makes pipelining fast: sixteen pipelined SETs cost one
//! `read`, one lock, one log hand-off and one `write`. A connection with
//! subscriptions also waits on its message queue and writes pushes as they come.
//!
//! *Reading never waits for writing.* Many clients (redis-py's pipelines, a
//! MULTI of 50,000 commands) write a whole pipeline before they read a reply. A
//! connection that stopped reading until its replies were taken would deadlock
//! with such a client once both socket buffers are full. So replies the socket
//! cannot take yet stay queued in the output buffer while the connection keeps
//! reading; it stops *running* requests once [`OUTPUT_PAUSE`] bytes of replies
//! wait, and stops *reading* once [`READ_AHEAD`] bytes of requests wait behind
//! them. A client is disconnected only when one reply would pass `max_output`.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::io::Read;

use appvisor_config::Persist;
use bytes::{Buf, BytesMut};

use super::args::Args;
use super::client::Client;
use super::command::{execute, Ctx};
use super::pubsub::Push;
use super::resp::{parse_request, FrameLimits, Parse, Reply};
use super::state::{now_ms, Shared};
use super::transport::{ReadBuffer, Socket, Transport};

/// A pass over the read buffer stops once it has produced this much output, so
/// replies start on their way (and the lock is let go) while more are made.
const OUTPUT_FLUSH: usize = 64 * 1024;
/// Replies waiting for the client past this pause the running of its requests
/// until it reads some: a client pipelining thousands of large GETs while it
/// reads makes the store hold ~1 MiB for it, not all of them.
const OUTPUT_PAUSE: usize = 1 << 20;
/// Requests read ahead while replies wait (beyond the one being read): a client
/// writing its whole pipeline before reading is served as long as its pipeline
/// is smaller than this or its replies smaller than [`OUTPUT_PAUSE`] (50,000
/// SETs are ~2 MB of requests and 250 KB of replies). Past it the connection
/// stops reading and the client's writes wait, as TCP flow control makes them.
const READ_AHEAD: usize = 64 << 20;
/// How long replies still queued at a close (QUIT, protocol error, max_output)
/// may wait for the client to take them.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Initial buffer sizes; they grow for large requests or replies and shrink back
/// afterwards, so an idle connection costs ~8 KiB.
const READ_CHUNK: usize = 4 * 1024;
/// Buffers grown past this are released once empty.
const SHRINK_ABOVE: usize = 1 << 20;
/// Pushes written per wake-up before the connection reads again.
const PUSH_BATCH: usize = 256;

/// What a connection that has not logged in may send: AUTH and HELLO fit. It
/// also reads no further ahead than one such frame.
const ANONYMOUS_LIMITS: FrameLimits = FrameLimits {
    max_bulk: 4096,
    max_args: 16,
    max_frame: 64 * 1024,
};

/// What one pass over the read buffer did.
pub(crate) struct Pass {
    pub consumed: usize,
    /// The buffer must hold this many bytes (from its start) before parsing again.
    pub need: usize,
    /// The pass stopped because the replies are large; run the rest after writing.
    pub more: bool,
    /// Sequence number of the log records this pass produced.
    pub log_seq: Option<u64>,
    /// Close after writing the replies (QUIT, protocol error, overflow).
    pub close: bool,
}

/// Serves one connection until it closes, errs, or is aborted at shutdown.
pub(crate) async fn serve<S: Socket>(inner: Arc<Shared>, socket: S, mut client: Client)
where
    for<'a> &'a S: Read,
{
    let Ok(stream) = Transport::new(socket) else {
        return;
    };
    let mut rbuf = ReadBuffer::new(READ_CHUNK);
    let mut wbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut args: Vec<Range<usize>> = Vec::with_capacity(8);
    let mut need = 1usize;
    // Whole requests may wait in `rbuf` (a pass stopped early, or was paused).
    let mut runnable = false;
    let mut queued = QueuedOutput::new(&inner.state.output);
    // Requests read and not run yet, counted the same way.
    let mut read_ahead = QueuedOutput::new(&inner.state.input);
    // A connection that has not logged in is closed at this deadline.
    let mut auth_deadline = client
        .seat
        .is_anonymous()
        .then(|| Box::pin(tokio::time::sleep(inner.state.auth_timeout)));
    'conn: loop {
        // Run requests while few replies wait, sending them as they come.
        while runnable && wbuf.len() < OUTPUT_PAUSE {
            let pass = run_requests(&inner, &mut client, rbuf.data(), &mut args, &mut wbuf);
            rbuf.consume(pass.consumed);
            need = pass.need - pass.consumed;
            runnable = pass.more;
            if let (Some(seq), Some(writer)) = (pass.log_seq, inner.writer.as_ref()) {
                if writer.mode == Persist::Always {
                    // `always`: nothing is acknowledged before it is on disk.
                    writer.durable(seq).await;
                } else {
                    // `everysec`: nothing waits, unless the disk lags far behind.
                    writer.throttle(seq).await;
                }
            }
            if pass.close {
                queued.set(wbuf.len());
                let _ = tokio::time::timeout(CLOSE_WAIT, stream.write_all(&wbuf)).await;
                stream.shutdown();
                break 'conn;
            }
            if send_now(&stream, &mut wbuf).is_err() {
                break 'conn;
            }
        }
        if wbuf.is_empty() {
            rbuf.shrink(SHRINK_ABOVE, READ_CHUNK);
            if wbuf.capacity() > SHRINK_ABOVE {
                wbuf = BytesMut::with_capacity(READ_CHUNK);
            }
        }
        queued.set(wbuf.len());
        read_ahead.set(rbuf.len());
        if client.overflowed() {
            // Its subscriber queue filled up while it did not read: as Redis
            // does with a pub/sub client past its output limit.
            break 'conn;
        }

        // Wait for bytes, for room in the socket while replies wait, and (once
        // subscribed) for messages to push.
        let pending = !wbuf.is_empty();
        let subscribed = client.subscriptions() > 0;
        let read_ahead = if client.db.is_some() {
            READ_AHEAD
        } else {
            ANONYMOUS_LIMITS.max_frame
        };
        let can_read = rbuf.len() < need.max(read_ahead);
        if auth_deadline.is_some() && !client.seat.is_anonymous() {
            auth_deadline = None;
        }
        let anonymous = auth_deadline.is_some();
        if !pending && !subscribed && !anonymous {
            // The common case, kept free of select!'s bookkeeping.
            match stream.read(&mut rbuf, need).await {
                Ok(0) | Err(_) => break 'conn,
                Ok(_) => runnable = rbuf.len() >= need,
            }
            continue;
        }
        let take_pushes = subscribed && wbuf.len() < OUTPUT_PAUSE;
        tokio::select! {
            read = stream.read(&mut rbuf, need), if can_read => match read {
                Ok(0) | Err(_) => break 'conn,
                Ok(_) => runnable = runnable || rbuf.len() >= need,
            },
            writable = stream.writable(), if pending => {
                if writable.is_err() || send_now(&stream, &mut wbuf).is_err() {
                    break 'conn;
                }
            }
            push = next_push(client.inbox.as_mut()), if take_pushes => {
                let Some(push) = push else { break 'conn };
                write_pushes(&mut client, push, &mut wbuf);
                if send_now(&stream, &mut wbuf).is_err() {
                    break 'conn;
                }
            }
            () = expire(auth_deadline.as_mut()), if anonymous => {
                tracing::debug!(
                    "closing client {} ({}): not logged in within {:?} (auth_timeout)",
                    client.id,
                    client.peer,
                    inner.state.auth_timeout
                );
                wbuf.extend_from_slice(b"-ERR not logged in in time (AUTH); closing the connection\r\n");
                let _ = send_now(&stream, &mut wbuf);
                stream.shutdown();
                break 'conn;
            }
            // Unreachable: with nothing pending, a request is incomplete, so
            // reading is allowed.
            else => break 'conn,
        }
    }
    drop(queued);
    drop(read_ahead);
    let mut ks = inner.lock();
    client.detach(&mut ks);
}

/// Sends what the socket takes now of `wbuf`, without waiting, and drops it
/// from the buffer.
fn send_now<S: Socket>(stream: &Transport<S>, wbuf: &mut BytesMut) -> std::io::Result<()>
where
    for<'a> &'a S: Read,
{
    if wbuf.is_empty() {
        return Ok(());
    }
    let sent = stream.write_some(wbuf)?;
    if sent == wbuf.len() {
        wbuf.clear();
    } else {
        wbuf.advance(sent);
    }
    Ok(())
}

/// Resolves at the deadline (never, without one).
async fn expire(deadline: Option<&mut std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match deadline {
        Some(deadline) => deadline.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The next message for a subscribed connection (never, without a queue).
async fn next_push(inbox: Option<&mut tokio::sync::mpsc::Receiver<Push>>) -> Option<Push> {
    match inbox {
        Some(inbox) => inbox.recv().await,
        None => std::future::pending().await,
    }
}

/// Reply bytes of one connection waiting for its client, counted in
/// `ServerState::output` (against max_memory) until dropped, also when the
/// connection's task is aborted. The same for its requests read ahead, in
/// `ServerState::input`.
struct QueuedOutput<'a> {
    total: &'a AtomicU64,
    bytes: u64,
}

impl<'a> QueuedOutput<'a> {
    fn new(total: &'a AtomicU64) -> QueuedOutput<'a> {
        QueuedOutput { total, bytes: 0 }
    }

    /// Counts `bytes` now; free when nothing changed (the common case: 0).
    fn set(&mut self, bytes: usize) {
        let bytes = bytes as u64;
        if bytes > self.bytes {
            self.total.fetch_add(bytes - self.bytes, Ordering::Relaxed);
        } else if bytes < self.bytes {
            self.total.fetch_sub(self.bytes - bytes, Ordering::Relaxed);
        }
        self.bytes = bytes;
    }
}

impl Drop for QueuedOutput<'_> {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// Parses and runs the whole requests at the front of `rbuf` with the keyspace
/// locked once, then hands the pass's log records to the writer (still locked,
/// so the log's order is the order the changes were made).
pub(crate) fn run_requests(
    inner: &Shared,
    client: &mut Client,
    rbuf: &[u8],
    args: &mut Vec<Range<usize>>,
    wbuf: &mut BytesMut,
) -> Pass {
    let mut ks = inner.lock();
    let now = now_ms();
    let mut pass = Pass {
        consumed: 0,
        need: 1,
        more: false,
        log_seq: None,
        close: false,
    };
    let start = wbuf.len();
    loop {
        if wbuf.len() - start >= OUTPUT_FLUSH {
            pass.more = true;
            break;
        }
        // Before AUTH only small requests are read: an anonymous client cannot make
        // the store buffer megabytes.
        let limits = if client.db.is_some() {
            &inner.limits
        } else {
            &ANONYMOUS_LIMITS
        };
        match parse_request(&rbuf[pass.consumed..], args, limits) {
            Parse::Complete { consumed } => {
                let buf = &rbuf[pass.consumed..];
                let resp3 = client.resp3;
                let before = wbuf.len();
                let mut ctx = Ctx {
                    ks: &mut ks,
                    client: &mut *client,
                    out: Reply {
                        buf: wbuf,
                        resp3,
                        limit: inner.state.max_output,
                        overflowed: false,
                    },
                    now,
                    server: &inner.state,
                };
                execute(&mut ctx, Args { buf, ranges: args });
                let overflowed = ctx.out.overflowed;
                ks.commands += 1;
                pass.consumed += consumed;
                if overflowed {
                    // As Redis's client-output-buffer-limit: the client is cut,
                    // not the store's memory. Its partial reply is dropped, so
                    // what it reads is whole frames and then the reason.
                    wbuf.truncate(before);
                    let app = client.db.map(|db| ks.dbs[db].name.clone());
                    tracing::warn!(
                        "closing client {} ({}{}{}): its replies would take more than {} bytes (max_output)",
                        client.id,
                        client.peer,
                        app.map(|a| format!(", app {a}")).unwrap_or_default(),
                        client
                            .name
                            .as_ref()
                            .map(|n| format!(", name {}", String::from_utf8_lossy(n)))
                            .unwrap_or_default(),
                        inner.state.max_output,
                    );
                    Reply::unlimited(wbuf, client.resp3).error(&format!(
                        "ERR reply too large: more than the store's max_output of {} bytes would be queued for this client; closing the connection",
                        inner.state.max_output
                    ));
                    pass.close = true;
                    break;
                }
                if client.closing {
                    pass.close = true;
                    break;
                }
            }
            Parse::Incomplete { need } => {
                pass.need = pass.consumed + need;
                break;
            }
            Parse::Invalid(why) => {
                Reply::unlimited(wbuf, client.resp3).error(&format!("ERR Protocol error: {why}"));
                pass.close = true;
                break;
            }
        }
    }
    if pass.need < pass.consumed + 1 {
        pass.need = pass.consumed + 1;
    }
    if !ks.log.is_empty() {
        if let Some(writer) = &inner.writer {
            pass.log_seq = Some(writer.submit(&mut ks.log));
        } else {
            ks.log.clear();
        }
    }
    pass
}

/// Encodes `first` and whatever else is queued (up to a batch) as push frames.
fn write_pushes(client: &mut Client, first: Push, wbuf: &mut BytesMut) {
    let resp3 = client.resp3;
    let mut out = Reply::unlimited(wbuf, resp3);
    encode_push(&mut out, &first);
    if let Some(inbox) = client.inbox.as_mut() {
        for _ in 1..PUSH_BATCH {
            match inbox.try_recv() {
                Ok(push) => encode_push(&mut out, &push),
                Err(_) => break,
            }
        }
    }
}

fn encode_push(out: &mut Reply<'_>, push: &Push) {
    match &push.pattern {
        None => {
            out.push(3);
            out.bulk(b"message");
        }
        Some(pattern) => {
            out.push(4);
            out.bulk(b"pmessage");
            out.bulk(pattern);
        }
    }
    out.bulk(&push.channel);
    out.bulk(&push.payload);
}
