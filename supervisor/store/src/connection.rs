//! One client connection: read, run every whole request in the buffer under one
//! lock of the keyspace, write all the replies at once.
//!
//! That batching is what makes pipelining fast: sixteen pipelined SETs cost one
//! `read`, one lock, one log hand-off and one `write`. A connection with
//! subscriptions also waits on its message queue and writes pushes as they come.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::io::Read;

use appvisor_config::Persist;
use bytes::BytesMut;

use super::args::Args;
use super::client::Client;
use super::command::{execute, Ctx};
use super::pubsub::Push;
use super::resp::{parse_request, FrameLimits, Parse, Reply};
use super::state::{now_ms, Shared};
use super::transport::{ReadBuffer, Socket, Transport};

/// Replies buffered past this are written before more requests run, so a client
/// pipelining thousands of large GETs cannot make the store buffer them all.
const OUTPUT_FLUSH: usize = 64 * 1024;
/// Initial buffer sizes; they grow for large requests or replies and shrink back
/// afterwards, so an idle connection costs ~8 KiB.
const READ_CHUNK: usize = 4 * 1024;
/// Buffers grown past this are released once empty.
const SHRINK_ABOVE: usize = 1 << 20;
/// Pushes written per wake-up before the connection reads again.
const PUSH_BATCH: usize = 256;

/// What a connection that has not logged in may send: AUTH and HELLO fit.
const ANONYMOUS_LIMITS: FrameLimits = FrameLimits {
    max_bulk: 4096,
    max_args: 16,
    max_frame: 64 * 1024,
};

/// What one pass over the read buffer did.
struct Pass {
    consumed: usize,
    /// The buffer must hold this many bytes (from its start) before parsing again.
    need: usize,
    /// The pass stopped because the replies are large; run the rest after writing.
    more: bool,
    /// Sequence number of the log records this pass produced.
    log_seq: Option<u64>,
    /// Close after writing the replies (QUIT, protocol error, overflow).
    close: bool,
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
    'conn: loop {
        // Wait for bytes (and, once subscribed, for messages to push).
        let subscribed = client.subscriptions() > 0;
        let read = match client.inbox.as_mut() {
            Some(inbox) if subscribed => {
                tokio::select! {
                    read = stream.read(&mut rbuf, need) => read,
                    push = inbox.recv() => {
                        let Some(push) = push else { break 'conn };
                        write_pushes(&mut client, push, &mut wbuf);
                        let overflowed = client.overflowed();
                        if stream.write_all(&wbuf).await.is_err() || overflowed {
                            break 'conn;
                        }
                        wbuf.clear();
                        continue 'conn;
                    }
                }
            }
            _ => stream.read(&mut rbuf, need).await,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if rbuf.len() < need {
            continue;
        }
        // Run every whole request, writing replies in slices of ~64 KiB.
        loop {
            let pass = run_requests(&inner, &mut client, rbuf.data(), &mut args, &mut wbuf);
            rbuf.consume(pass.consumed);
            need = pass.need - pass.consumed;
            if let (Some(seq), Some(writer)) = (pass.log_seq, inner.writer.as_ref()) {
                if writer.mode == Persist::Always {
                    // `always`: nothing is acknowledged before it is on disk.
                    writer.durable(seq).await;
                } else {
                    // `everysec`: nothing waits, unless the disk lags far behind.
                    writer.throttle(seq).await;
                }
            }
            if !wbuf.is_empty() && write_counted(&inner, &stream, &wbuf).await.is_err() {
                break 'conn;
            }
            wbuf.clear();
            if pass.close {
                stream.shutdown();
                break 'conn;
            }
            if !pass.more {
                break;
            }
        }
        rbuf.shrink(SHRINK_ABOVE, READ_CHUNK);
        if wbuf.capacity() > SHRINK_ABOVE {
            wbuf = BytesMut::with_capacity(READ_CHUNK);
        }
    }
    let mut ks = inner.lock();
    client.detach(&mut ks);
}

/// Writes `data`, counting it against max_memory (as queued output) while the
/// client is slow to take it. Small replies are not counted: they are written
/// at once, and a pass stops queueing at [`OUTPUT_FLUSH`].
async fn write_counted<S: Socket>(
    inner: &Shared,
    stream: &Transport<S>,
    data: &[u8],
) -> std::io::Result<()>
where
    for<'a> &'a S: Read,
{
    if data.len() <= OUTPUT_FLUSH {
        return stream.write_all(data).await;
    }
    let _queued = QueuedOutput::count(&inner.state.output, data.len());
    stream.write_all(data).await
}

/// Reply bytes counted in `ServerState::output` until dropped (also when the
/// connection's task is aborted mid-write).
struct QueuedOutput<'a> {
    total: &'a AtomicU64,
    bytes: u64,
}

impl<'a> QueuedOutput<'a> {
    fn count(total: &'a AtomicU64, bytes: usize) -> QueuedOutput<'a> {
        let bytes = bytes as u64;
        total.fetch_add(bytes, Ordering::Relaxed);
        QueuedOutput { total, bytes }
    }
}

impl Drop for QueuedOutput<'_> {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Parses and runs the whole requests at the front of `rbuf` with the keyspace
/// locked once, then hands the pass's log records to the writer (still locked,
/// so the log's order is the order the changes were made).
fn run_requests(
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
    loop {
        if wbuf.len() >= OUTPUT_FLUSH {
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
