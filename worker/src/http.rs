//! An HTTP/1.1 server loop that drains without dropping a request.
//!
//! [`Server::serve`] accepts on one or more [`Listener`]s and serves each
//! connection with hyper, keep-alive on, until the [`Shutdown`] latch is set.
//! Then it drains:
//!
//! 1. **Stop accepting at once.** The accept loops end and drop their copy of
//!    the listening socket. The socket itself stays open in the supervisor,
//!    which has handed it to the next generation; connections that arrive now
//!    wait in the kernel's backlog for that generation. `STOPPING=1` is sent.
//! 2. **Finish what is in flight.** Requests already being handled run to the
//!    end. Every response produced from now on carries `Connection: close`,
//!    and hyper closes the connection after writing it.
//! 3. **Give idle connections a grace.** A keep-alive connection with no
//!    request in flight is not closed at once: for [`DEFAULT_IDLE_GRACE`] it
//!    may still send one request, which is answered with `Connection: close`.
//!    Closing an idle keep-alive connection races with a client that is
//!    sending on it right then; the client sees a reset and a load tester
//!    counts an error. A client that is actively sending (a load tester, an
//!    nginx upstream under load) sends within microseconds, so the grace turns
//!    that race into a clean `Connection: close`. After the grace, hyper's
//!    graceful shutdown closes the connections that are still idle and lets
//!    the busy ones finish their current response.
//! 4. **Return** once every connection is closed, with a [`DrainReport`].
//!
//! The grace (250 ms) is short next to a typical `shutdown_timeout` and long
//! next to a busy client's gap between requests; it only delays the old
//! generation's exit, never a request. Requests are counted when their head
//! has been read, into the worker's [`RequestCounter`] if one is given.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, CONNECTION};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::mpsc;

use crate::listener::{Listener, Stream};
use crate::requests::RequestCounter;
use crate::sd_notify::Notifier;
use crate::shutdown::{Shutdown, ShutdownCause};
use crate::worker::Worker;

/// How long an idle keep-alive connection may still send a request after
/// draining starts. See the module docs for why it is not zero.
pub const DEFAULT_IDLE_GRACE: Duration = Duration::from_millis(250);

/// The boxed error type hyper accepts from services and bodies.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// What a finished [`Server::serve`] did.
#[derive(Debug, Clone, Default)]
pub struct DrainReport {
    /// Connections accepted over the server's life.
    pub connections: u64,
    /// Requests whose head was read over the server's life.
    pub requests: u64,
    /// Connections still open when draining started.
    pub open_at_drain: usize,
    /// From the start of draining until the last connection closed.
    pub drain: Duration,
    /// What started the drain (a signal name or a request).
    pub cause: Option<ShutdownCause>,
}

/// Serves HTTP/1.1 on one listener until `shutdown`, then drains; no request
/// counting, no notifications. See [`Server`] for those.
pub async fn serve<S, B>(
    listener: Listener,
    service: S,
    shutdown: Shutdown,
) -> io::Result<DrainReport>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    Server::new().serve(vec![listener], service, shutdown).await
}

/// The HTTP server loop, configured.
#[derive(Debug, Clone)]
pub struct Server {
    idle_grace: Duration,
    requests: Option<RequestCounter>,
    notifier: Notifier,
}

impl Default for Server {
    fn default() -> Self {
        Server::new()
    }
}

impl Server {
    /// A server that counts nothing and notifies nobody.
    pub fn new() -> Server {
        Server {
            idle_grace: DEFAULT_IDLE_GRACE,
            requests: None,
            notifier: Notifier::disabled(),
        }
    }

    /// A server that counts into the worker's counter and sends `STOPPING=1`
    /// to its supervisor when draining starts.
    pub fn for_worker(worker: &Worker) -> Server {
        Server::new()
            .requests(worker.requests().clone())
            .notifier(worker.notifier().clone())
    }

    /// Sets the idle grace (see the module docs).
    pub fn idle_grace(mut self, grace: Duration) -> Server {
        self.idle_grace = grace;
        self
    }

    /// Counts every request into `counter`.
    pub fn requests(mut self, counter: RequestCounter) -> Server {
        self.requests = Some(counter);
        self
    }

    /// Sends `STOPPING=1` through `notifier` when draining starts.
    pub fn notifier(mut self, notifier: Notifier) -> Server {
        self.notifier = notifier;
        self
    }

    /// Serves until `shutdown`, drains, and returns when every connection is
    /// closed. Needs a tokio runtime.
    pub async fn serve<S, B>(
        &self,
        listeners: Vec<Listener>,
        service: S,
        shutdown: Shutdown,
    ) -> io::Result<DrainReport>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let shared = Arc::new(Shared {
            draining: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            counter: self.requests.clone(),
            idle_grace: self.idle_grace,
            shutdown: shutdown.clone(),
        });
        // Every connection task holds a clone of `alive`; when the last clone
        // is dropped, `all_closed.recv()` returns None: all connections are gone.
        let (alive, mut all_closed) = mpsc::channel::<()>(1);
        let mut accept_loops = Vec::with_capacity(listeners.len());
        for listener in listeners {
            let shared = Arc::clone(&shared);
            let service = service.clone();
            let alive = alive.clone();
            accept_loops.push(tokio::spawn(accept_loop(listener, service, shared, alive)));
        }
        drop(alive);

        let cause = shutdown.wait().await;
        let drain_start = Instant::now();
        shared.draining.store(true, Ordering::SeqCst);
        let open_at_drain = shared.open.load(Ordering::SeqCst);
        tracing::debug!("draining on {cause}: {open_at_drain} connections open");
        // Best effort: the supervisor already knows it sent the signal. If
        // its queue is full, wait for room on a blocking-pool thread: a
        // supervisor slow to read must not hold up the drain.
        if let Ok(false) = self.notifier.try_send(appvisor_contract::notify::STOPPING) {
            let notifier = self.notifier.clone();
            tokio::task::spawn_blocking(move || notifier.stopping());
        }
        for accept in accept_loops {
            // An accept loop ends when it sees the shutdown; a panic in one
            // (there is no code that panics) would surface here.
            if let Err(e) = accept.await {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
        let _ = all_closed.recv().await;
        tracing::debug!(
            "drained in {} ms: every connection closed",
            drain_start.elapsed().as_millis()
        );
        Ok(DrainReport {
            connections: shared.connections.load(Ordering::SeqCst),
            requests: shared.requests.load(Ordering::SeqCst),
            open_at_drain,
            drain: drain_start.elapsed(),
            cause: Some(cause),
        })
    }
}

/// State shared by the accept loops and connection tasks of one server.
#[derive(Debug)]
struct Shared {
    /// Set when draining starts: responses get `Connection: close`.
    draining: AtomicBool,
    connections: AtomicU64,
    requests: AtomicU64,
    /// Connections currently open.
    open: AtomicUsize,
    counter: Option<RequestCounter>,
    idle_grace: Duration,
    shutdown: Shutdown,
}

async fn accept_loop<S, B>(
    listener: Listener,
    service: S,
    shared: Arc<Shared>,
    alive: mpsc::Sender<()>,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut builder = http1::Builder::new();
    // The timer enables hyper's header-read timeout, so a client that opens a
    // connection and sends half a request head cannot hold a drain forever.
    builder.timer(TokioTimer::new()).keep_alive(true);
    let mut warned_at: Option<Instant> = None;
    let stop = shared.shutdown.wait();
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            biased;
            _ = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // Accept errors are per connection (ECONNABORTED) or transient
                // (EMFILE, ENOBUFS): keep accepting. When out of fds, pause
                // briefly instead of spinning, and say so at most once a second.
                if warned_at.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                    tracing::warn!("accept on {listener}: {e}");
                    warned_at = Some(Instant::now());
                }
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                continue;
            }
        };
        shared.connections.fetch_add(1, Ordering::Relaxed);
        shared.open.fetch_add(1, Ordering::SeqCst);
        let guard = OpenConnection {
            shared: Arc::clone(&shared),
            _alive: alive.clone(),
        };
        let service = DrainAware {
            inner: service.clone(),
            shared: Arc::clone(&shared),
        };
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(run_connection(connection, guard));
    }
}

/// Marks a connection as open for as long as it lives.
struct OpenConnection {
    shared: Arc<Shared>,
    _alive: mpsc::Sender<()>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn run_connection<S, B>(
    connection: http1::Connection<TokioIo<Stream>, DrainAware<S>>,
    guard: OpenConnection,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let shared = Arc::clone(&guard.shared);
    tokio::pin!(connection);
    // Connection errors (a client reset, a malformed request) concern one
    // client only and hyper has already answered what it could: ignore them.
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = shared.shutdown.wait() => {}
    }
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = tokio::time::sleep(shared.idle_grace) => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
    drop(guard);
}

/// Wraps the app's service: counts requests and, once draining, adds
/// `Connection: close` to responses.
#[derive(Debug, Clone)]
struct DrainAware<S> {
    inner: S,
    shared: Arc<Shared>,
}

type ResponseFuture<B, E> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>;

impl<S, B> Service<Request<Incoming>> for DrainAware<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = ResponseFuture<B, S::Error>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(counter) = &self.shared.counter {
            counter.increment();
        }
        let response = self.inner.call(request);
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let mut response = response.await?;
            // Checked when the response is ready, not when the request came:
            // a request that was in flight when draining began must close its
            // connection too.
            if shared.draining.load(Ordering::SeqCst) {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response)
        })
    }
}
