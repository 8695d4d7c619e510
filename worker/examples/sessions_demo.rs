//! A per-session counter that survives recycles: the sessions half of the
//! demo app.
//!
//! ```text
//! cargo run -p appvisor-worker --example sessions_demo
//! curl -c jar -b jar localhost:3000/counter   # 1, 2, 3, … per cookie jar
//! ```
//!
//! Endpoints:
//! - `GET /counter` — adds one to this session's counter and answers
//!   `counter=N mode=M pid=P` (a new visitor gets a cookie)
//! - `GET /logout` — abandons the session (data deleted, cookie expired)
//! - `GET /healthz` — `ok`
//!
//! The session mode, timeout and store come from appvisor's environment
//! (`APPVISOR_SESSION_MODE`, `APPVISOR_SESSION_TIMEOUT_MS`,
//! `APPVISOR_STORE_URL`); run by hand with no store it uses `inproc`. Under
//! appvisor in `handoff` or `store` mode the counter keeps counting across
//! recycles; in `inproc` mode every recycle starts it over. On SIGTERM it
//! hands its sessions over at once (`begin_handoff`, concurrently with the
//! request drain: from then on it writes through to the store), drains
//! requests, flushes whatever is left, and tells appvisor how many sessions
//! it handed off (`X_APPVISOR_SESSIONS=n`, the `sessions` field of the
//! `retired` event).
//!
//! Session ends: in `store` and `handoff` mode, worker 0 (`APPVISOR_WORKER`,
//! or the only worker when run by hand) subscribes to them and logs
//! `sessions-demo: session ended <redacted id>` when a stored session
//! expires. Only worker 0, because every subscriber receives every end.
//!
//! `SESSIONS_DEMO_ADDR=host:port` sets where to listen when no socket is
//! inherited (default `127.0.0.1:3000`). Lifecycle lines go to stdout,
//! prefixed `sessions-demo:`.

use std::convert::Infallible;

use appvisor_worker::contract::notify::X_APPVISOR_SESSIONS;
use appvisor_worker::sessions::{self, SessionHandle, SessionMode, Sessions};
use appvisor_worker::{http, Listener, Shutdown, Worker};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};

fn main() {
    // The SDK reports through `tracing`; an app chooses where that goes. Here:
    // stderr (captured by appvisor into logs/<app>.log), filtered by RUST_LOG.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run() {
        eprintln!("sessions-demo: error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    // Before any runtime thread exists: this edits the environment.
    let mut worker = Worker::from_env()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut listeners = worker.take_listeners()?;
        if listeners.is_empty() {
            let addr =
                std::env::var("SESSIONS_DEMO_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
            listeners.push(Listener::bind_tcp(&addr).await?);
        }
        let sessions = Sessions::from_env().await?;
        let shutdown = Shutdown::on_stop_signals()?;
        for l in &listeners {
            println!(
                "sessions-demo: listening on {l} pid {} sessions {} timeout {:?}",
                std::process::id(),
                sessions.mode(),
                sessions.timeout()
            );
        }

        // Session_End: from the store every worker that subscribes gets
        // every end, so only worker 0 does; in inproc mode each worker
        // reports the sessions of its own memory.
        if sessions.mode() == SessionMode::Inproc || worker.index().unwrap_or(0) == 0 {
            match sessions.on_end().await {
                Ok(mut ends) => {
                    tokio::spawn(async move {
                        while let Some(id) = ends.recv().await {
                            println!("sessions-demo: session ended {}", id.redacted());
                        }
                    });
                }
                // Sessions still work without end events.
                Err(e) => eprintln!("sessions-demo: no session end events: {e}"),
            }
        }

        // The one line that gives the app sessions.
        let mode = sessions.mode();
        let service = sessions::layer(sessions.clone())
            .around(service_fn(move |request| respond(mode, request)));

        // The moment the stop signal arrives — not after the drain — hand
        // the sessions to the next generation, which is already serving and
        // waits for our marker before it reads the store.
        let handing_off = {
            let (sessions, shutdown) = (sessions.clone(), shutdown.clone());
            tokio::spawn(async move {
                shutdown.wait().await;
                sessions.begin_handoff().await
            })
        };

        worker.ready()?;
        println!("sessions-demo: ready");
        let report = http::Server::for_worker(&worker)
            .serve(listeners, service, shutdown)
            .await?;
        println!(
            "sessions-demo: drained {} requests in {:?}",
            report.requests, report.drain
        );
        let mut handed = 0;
        match handing_off.await {
            Ok(Ok(handoff)) => {
                handed += handoff.flushed;
                println!(
                    "sessions-demo: handoff: {} sessions ({} merged) flushed in {:?}",
                    handoff.flushed, handoff.merged, handoff.elapsed
                );
            }
            // drain() below tries again.
            Ok(Err(e)) => eprintln!("sessions-demo: handoff failed: {e}"),
            Err(e) => eprintln!("sessions-demo: handoff task failed: {e}"),
        }
        // Requests are done: flush anything still dirty (normally nothing).
        let rest = sessions.drain().await?;
        handed += rest.flushed;
        println!(
            "sessions-demo: handed off {handed} sessions ({} after the drain)",
            rest.flushed
        );
        if let Err(e) = worker
            .notifier()
            .send(&format!("{X_APPVISOR_SESSIONS}={handed}"))
        {
            eprintln!("sessions-demo: cannot report the handoff to appvisor: {e}");
        }
        Ok(())
    })
}

async fn respond(
    mode: SessionMode,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let session = request
        .extensions()
        .get::<SessionHandle>()
        .expect("the session layer adds a SessionHandle to every request")
        .clone();
    let reply = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        Ok(response)
    };
    match request.uri().path() {
        "/counter" => match session.incr("counter", 1) {
            Ok(n) => reply(
                StatusCode::OK,
                format!("counter={n} mode={mode} pid={}\n", std::process::id()),
            ),
            // A 5xx: the layer does not commit this request.
            Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
        "/logout" => {
            session.abandon();
            reply(StatusCode::OK, "bye\n".into())
        }
        "/healthz" => reply(StatusCode::OK, "ok\n".into()),
        _ => reply(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}
