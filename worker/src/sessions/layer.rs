//! The session layer, for any `http::Request` → `http::Response` service, in
//! one line. [`SessionService`] is both a tower service (axum, any tower
//! stack) and a hyper service (plain hyper, [`crate::http::Server`]):
//!
//! ```text
//! Router::new().route(…).layer(sessions::layer(sessions))          // axum / tower
//! sessions::layer(sessions).around(service_fn(handler))              // hyper, http::Server
//! ```
//!
//! Handlers find the session as `Extension<SessionHandle>` (axum) or
//! `request.extensions().get::<SessionHandle>()`.
//!
//! Per request: read the id from the cookie; load (renewing the sliding
//! expiry) or start a fresh session; put a [`SessionHandle`] in the request
//! extensions; run the inner service; then commit the request's changes
//! **only if** it returned `Ok` with a status below 500 — a failed request
//! leaves the session as it was, as in ASP.NET. A handler that panics never
//! reaches the commit either. The [`CommitOutcome`](super::CommitOutcome)
//! of a write is put in the response extensions, so an outer layer can log
//! merges and conflicts.
//!
//! When the store cannot be reached the request is answered 503 without
//! running the handler; when a commit fails it is answered 500 (its changes
//! were not kept, so a success must not be claimed). Either is also a
//! `tracing` error event, for whatever subscriber the app installs.
//!
//! An id the store does not know is never adopted: the request gets a fresh
//! id (no session fixation), and a cookie is only sent once a session has
//! something in it, so cookie-less clients and bots cost nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use http::header::{HeaderValue, SET_COOKIE};
use http::{Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tower_layer::Layer;
use tower_service::Service;

use super::cookie::{expire_cookie_header, id_from_headers, set_cookie_header, CookieOptions};
use super::error::SessionError;
use super::id::SessionId;
use super::session::Session;
use super::Sessions;

/// `Router::new()….layer(sessions::layer(sessions))`: default cookie options.
pub fn layer(sessions: Sessions) -> SessionLayer {
    SessionLayer::new(sessions)
}

/// Tower layer adding sessions to every request. Cheap to clone.
#[derive(Clone)]
pub struct SessionLayer {
    sessions: Sessions,
    cookie: Arc<CookieOptions>,
}

impl SessionLayer {
    /// With the default cookie (`appvisor_sid`, HttpOnly, SameSite=Lax, Path=/).
    pub fn new(sessions: Sessions) -> SessionLayer {
        SessionLayer {
            sessions,
            cookie: Arc::new(CookieOptions::default()),
        }
    }

    /// With custom cookie options, checked here once.
    pub fn with_cookie(mut self, options: CookieOptions) -> Result<SessionLayer, SessionError> {
        options.validate()?;
        self.cookie = Arc::new(options);
        Ok(self)
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;
    fn layer(&self, inner: S) -> SessionService<S> {
        SessionService {
            inner,
            sessions: self.sessions.clone(),
            cookie: self.cookie.clone(),
        }
    }
}

/// The service [`SessionLayer`] wraps around an inner service.
#[derive(Clone)]
pub struct SessionService<S> {
    inner: S,
    sessions: Sessions,
    cookie: Arc<CookieOptions>,
}

impl SessionLayer {
    /// Wraps `inner`; the same as [`Layer::layer`], without importing the
    /// trait. `inner` may be a tower service (axum) or a hyper service
    /// (`hyper::service::service_fn`, for [`crate::http::Server`]).
    pub fn around<S>(&self, inner: S) -> SessionService<S> {
        self.layer(inner)
    }
}

/// As a tower service: for axum's `Router::layer` and any tower stack.
impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The service that was polled ready goes into the future; a clone
        // stays for the next call (tower's documented pattern).
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        Box::pin(handle(
            self.sessions.clone(),
            self.cookie.clone(),
            request,
            move |request| inner.call(request),
        ))
    }
}

/// As a hyper service: for [`crate::http::Server::serve`] and plain hyper.
#[cfg(feature = "http")]
impl<S, ReqBody, ResBody> hyper::service::Service<Request<ReqBody>> for SessionService<S>
where
    S: hyper::service::Service<Request<ReqBody>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResBody>, S::Error>> + Send>>;

    fn call(&self, request: Request<ReqBody>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(handle(
            self.sessions.clone(),
            self.cookie.clone(),
            request,
            move |request| inner.call(request),
        ))
    }
}

/// One request: open the session, run the handler, commit on success.
async fn handle<ReqBody, ResBody, E, Fut>(
    sessions: Sessions,
    cookie: Arc<CookieOptions>,
    mut request: Request<ReqBody>,
    call: impl FnOnce(Request<ReqBody>) -> Fut,
) -> Result<Response<ResBody>, E>
where
    Fut: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Default,
{
    let had_cookie = id_from_headers(request.headers(), &cookie.name);
    let session = match open(&sessions, had_cookie).await {
        Ok(session) => session,
        Err(error) => {
            tracing::error!("cannot load the session: {error}; answering 503");
            return Ok(status_only(StatusCode::SERVICE_UNAVAILABLE));
        }
    };
    let fresh_id = session.is_new();
    let handle = SessionHandle::new(session);
    request.extensions_mut().insert(handle.clone());

    let mut response = call(request).await?;
    let (mut session, abandoned) = handle.finish();
    if response.status().is_server_error() {
        // Failed request: its changes are dropped (expiry was still renewed
        // by the load, as ASP.NET does).
        return Ok(response);
    }
    if abandoned {
        if let Err(error) = sessions.abandon(session.id()).await {
            tracing::error!("cannot abandon the session: {error}; answering 500");
            return Ok(status_only(StatusCode::INTERNAL_SERVER_ERROR));
        }
        if had_cookie.is_some() {
            append_cookie(&mut response, expire_cookie_header(&cookie));
        }
        return Ok(response);
    }
    if session.is_dirty() {
        match sessions.commit(&mut session).await {
            Ok(outcome) => {
                if fresh_id || cookie.max_age.is_some() {
                    append_cookie(&mut response, set_cookie_header(session.id(), &cookie));
                }
                response.extensions_mut().insert(outcome);
            }
            Err(error) => {
                // Never pretend the request's state was kept.
                tracing::error!("cannot commit the session: {error}; answering 500");
                return Ok(status_only(StatusCode::INTERNAL_SERVER_ERROR));
            }
        }
    } else if cookie.max_age.is_some() && !fresh_id {
        append_cookie(&mut response, set_cookie_header(session.id(), &cookie));
    }
    Ok(response)
}

async fn open(sessions: &Sessions, id: Option<SessionId>) -> Result<Session, SessionError> {
    if let Some(id) = id {
        let session = sessions.load(&id).await?;
        if !session.is_new() {
            return Ok(session);
        }
    }
    sessions.new_session()
}

fn append_cookie<B>(response: &mut Response<B>, value: String) {
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().append(SET_COOKIE, value);
    }
}

fn status_only<B: Default>(status: StatusCode) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = status;
    response
}

struct Slot {
    session: Option<Session>,
    abandoned: bool,
}

/// The current request's session, found in its extensions
/// (`Extension<SessionHandle>` in axum). Clones share the same session.
/// Every method is a short, non-async critical section.
#[derive(Clone)]
pub struct SessionHandle {
    slot: Arc<Mutex<Slot>>,
    id: SessionId,
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandle")
            .field("id", &self.id)
            .finish()
    }
}

impl SessionHandle {
    /// Wraps a session (the layer does this; useful for tests of handlers).
    pub fn new(session: Session) -> SessionHandle {
        SessionHandle {
            id: *session.id(),
            slot: Arc::new(Mutex::new(Slot {
                session: Some(session),
                abandoned: false,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Runs `f` on the session.
    pub fn with<R>(&self, f: impl FnOnce(&mut Session) -> R) -> Result<R, SessionError> {
        let mut slot = self.lock();
        let session = slot.session.as_mut().ok_or(SessionError::RequestFinished)?;
        Ok(f(session))
    }

    /// See [`Session::get`].
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        self.with(|s| s.get(key))?
    }

    /// See [`Session::get_value`].
    pub fn get_value(&self, key: &str) -> Result<Option<Value>, SessionError> {
        self.with(|s| s.get_value(key).cloned())
    }

    /// See [`Session::set`].
    pub fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), SessionError> {
        self.with(|s| s.set(key, value))?
    }

    /// See [`Session::remove`].
    pub fn remove(&self, key: &str) -> Result<Option<Value>, SessionError> {
        self.with(|s| s.remove(key))
    }

    /// See [`Session::incr`]: concurrent increments merge by adding.
    pub fn incr(&self, key: &str, by: i64) -> Result<i64, SessionError> {
        self.with(|s| s.incr(key, by))?
    }

    /// True when this request started the session.
    pub fn is_new(&self) -> Result<bool, SessionError> {
        self.with(|s| s.is_new())
    }

    /// Ends the session when the request succeeds (log out): its data is
    /// deleted and the browser told to drop the cookie.
    pub fn abandon(&self) {
        self.lock().abandoned = true;
    }

    /// Takes the session back out at the end of the request.
    fn finish(&self) -> (Session, bool) {
        let mut slot = self.lock();
        let session = slot
            .session
            .take()
            .expect("a request's session is finished once");
        (session, slot.abandoned)
    }
}
