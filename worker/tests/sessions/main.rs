//! The worker SDK's sessions against real stores, in one test binary.
//!
//! Every test that any Redis-protocol store can serve runs twice (see
//! [`harness::per_backend`]): `…::embedded`, against appvisor's embedded store
//! started in this process (what users get by default; no environment variable
//! needed), and `…::redis_server`, against a `redis-server` of its own (or the
//! Redis named by `APPVISOR_TEST_STORE_URL`). Each test has a key prefix of its
//! own. Tests that control a server's configuration (`notify-keyspace-events`,
//! ACLs, killing its connections), a Redis Cluster, or TLS run on
//! `redis-server` only: the embedded store has none of those.
//!
//! | module | what |
//! |---|---|
//! | [`store`] | store, handoff and inproc modes; concurrent commits; the HTTP layer |
//! | [`handoff`] | the handoff protocol of overlapped recycles |
//! | [`end`] | session ends (`Sessions::on_end`) |
//! | [`cluster`] | a three-master Redis Cluster: routing, MOVED/ASK, ends |
//! | [`tls`] | `rediss://` |

#![cfg(feature = "sessions")]

mod harness;

mod cluster;
mod end;
mod handoff;
#[cfg(feature = "http")]
mod store;
mod tls;
