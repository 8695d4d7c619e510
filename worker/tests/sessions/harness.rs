//! The stores the session tests run against, ready before they are returned and
//! stopped on drop: appvisor's embedded store in this process (what users get by
//! default), a real `redis-server` on a unix socket in a temp dir, or a real
//! three-master Redis Cluster; [`TestStore`], the store one test uses, and
//! [`per_backend!`], which runs a test once per [`Backend`].

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use appvisor_store::{AppCredential, StoreOptions};

/// The store a test that runs on both runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// appvisor's embedded store, started in this process on a thread of its own
    /// (as the supervisor runs it), with the default `[store]` settings and an
    /// app of its own; the URL is the one the supervisor hands that app's workers.
    Embedded,
    /// A `redis-server` of the test's own, or the Redis named by
    /// `APPVISOR_TEST_STORE_URL` when that is set.
    RedisServer,
}

/// Runs each named `async fn name(backend: Backend)` once per backend, as the
/// tests `name::embedded` and `name::redis_server` (so `cargo test embedded`
/// selects one backend), each with the given tokio test attribute.
macro_rules! per_backend {
    (#[$attr:meta] $($test:ident),+ $(,)?) => {
        $(
            mod $test {
                use crate::harness::Backend;

                #[$attr]
                async fn embedded() {
                    super::$test(Backend::Embedded).await
                }

                #[$attr]
                async fn redis_server() {
                    super::$test(Backend::RedisServer).await
                }
            }
        )+
    };
}
pub(crate) use per_backend;

/// A store for one test: its URL, a key prefix of its own (so tests sharing
/// a store never see each other's keys), and — when the test started it —
/// the server, stopped on drop.
pub struct TestStore {
    pub url: String,
    pub prefix: String,
    pub server: Server,
}

/// What a [`TestStore`] started for its test.
pub enum Server {
    /// Nothing: the store is `APPVISOR_TEST_STORE_URL`'s.
    External,
    Redis(RedisServer),
    /// Held for its `Drop`, which stops the store.
    Embedded(#[allow(dead_code)] EmbeddedStore),
}

static NEXT_STORE: AtomicUsize = AtomicUsize::new(0);

impl TestStore {
    /// A store on `backend`. For [`Backend::RedisServer`]: the store named by
    /// `APPVISOR_TEST_STORE_URL` if set, else [`own`](Self::own) with `extra`
    /// config arguments (the embedded store takes none).
    pub async fn start(backend: Backend, tag: &str, extra: &[&str]) -> TestStore {
        match backend {
            Backend::Embedded => {
                let (n, prefix) = Self::next_prefix(tag);
                let store = EmbeddedStore::start(&format!("{tag}-{}-{n}", std::process::id()));
                TestStore {
                    url: store.url.clone(),
                    prefix,
                    server: Server::Embedded(store),
                }
            }
            Backend::RedisServer => match std::env::var("APPVISOR_TEST_STORE_URL") {
                Ok(url) if !url.is_empty() => TestStore {
                    url,
                    prefix: Self::next_prefix(tag).1,
                    server: Server::External,
                },
                _ => Self::own(tag, extra).await,
            },
        }
    }

    /// Always a redis-server of its own, started with `extra` config
    /// arguments; `tag` names its directory and the key prefix.
    pub async fn own(tag: &str, extra: &[&str]) -> TestStore {
        let (n, prefix) = Self::next_prefix(tag);
        let server = RedisServer::start(&format!("{tag}-{}-{n}", std::process::id()), extra).await;
        TestStore {
            url: server.url.clone(),
            prefix,
            server: Server::Redis(server),
        }
    }

    /// The redis-server this test started (for tests that need one).
    pub fn redis_server(&self) -> &RedisServer {
        match &self.server {
            Server::Redis(server) => server,
            _ => panic!("this test needs a redis-server of its own (TestStore::own)"),
        }
    }

    fn next_prefix(tag: &str) -> (usize, String) {
        let n = NEXT_STORE.fetch_add(1, Ordering::SeqCst);
        (n, format!("{tag}{}-{n}:s:", std::process::id()))
    }

    /// A plain Redis client on the same store, to look behind the SDK.
    pub async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

/// appvisor's embedded store, started as the supervisor starts it (the
/// `[store]` defaults: its log written every second, per-app sockets) on a
/// thread and current-thread runtime of its own; stopped and its directory
/// removed on drop.
pub struct EmbeddedStore {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: PathBuf,
    /// What the supervisor would put in `APPVISOR_STORE_URL` for the app.
    pub url: String,
}

impl EmbeddedStore {
    const APP: &str = "sessions-test";

    /// Starts a store in `<tmp>/appvisor-<name>` with one app and a random token.
    pub fn start(name: &str) -> EmbeddedStore {
        let dir = std::env::temp_dir().join(format!("appvisor-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut token = [0u8; 16];
        getrandom::fill(&mut token).expect("random token");
        let credential = AppCredential {
            app: Self::APP.to_owned(),
            password: token.iter().map(|b| format!("{b:02x}")).collect(),
        };
        // The defaults of an empty `[store]` section.
        let config = appvisor_config::EmbeddedStore {
            tcp: None,
            persist: appvisor_config::Persist::EverySec,
            max_memory: None,
            max_value_size: 1 << 20,
            max_clients: 10_000,
        };
        let opts = StoreOptions::from_config(&dir, &config, vec![credential]);
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the store");
            runtime.block_on(async move {
                let shutdown = async move {
                    let _ = stop_rx.await;
                };
                match appvisor_store::serve(opts, shutdown).await {
                    Ok(handle) => {
                        let _ = handle_tx.send(Ok(handle.clone()));
                        handle.closed().await;
                    }
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                    }
                }
            });
        });
        let handle = match handle_rx.recv().expect("the store thread reports") {
            Ok(handle) => handle,
            Err(e) => panic!("the embedded store did not start in {}: {e}", dir.display()),
        };
        let url = handle.url_for(Self::APP).expect("the app has a URL");
        EmbeddedStore {
            stop: Some(stop),
            thread: Some(thread),
            dir,
            url,
        }
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct RedisServer {
    child: Child,
    dir: PathBuf,
    pub socket: PathBuf,
    /// `unix:///…/redis.sock`
    pub url: String,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RedisServer {
    /// Starts a server in `<tmp>/appvisor-<name>`, with `extra` config
    /// arguments, and waits (10 s at most) until it answers PING.
    pub async fn start(name: &str, extra: &[&str]) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("appvisor-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(extra)
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        let url = format!("unix://{}", socket.display());
        let server = RedisServer {
            child,
            dir,
            socket,
            url,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let client = redis::Client::open(server.url.as_str()).unwrap();
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
                if pong.as_deref() == Ok("PONG") {
                    return server;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING on {} within 10 s",
                server.url
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A real Redis Cluster: three `redis-server` masters on loopback TCP
/// (ports picked free, cluster bus ports too), joined by
/// `redis-cli --cluster create`, ready (`cluster_state:ok` on every node)
/// before it is returned; killed on drop.
pub struct RedisCluster {
    children: Vec<Child>,
    dir: PathBuf,
    pub ports: Vec<u16>,
    /// `redis://127.0.0.1:<first port>`: one seed, as a user would give it.
    pub url: String,
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RedisCluster {
    pub async fn start(name: &str) -> RedisCluster {
        let dir = std::env::temp_dir().join(format!("appvisor-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cluster = RedisCluster {
            children: Vec::new(),
            dir,
            ports: Vec::new(),
            url: String::new(),
        };
        for _ in 0..3 {
            let (port, bus) = (free_port(), free_port());
            let node_dir = cluster.dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus.to_string(),
                ])
                .args(["--cluster-node-timeout", "5000"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("redis-server must be installed (apt-get install redis-server)");
            cluster.children.push(child);
            cluster.ports.push(port);
        }
        for port in cluster.ports.clone() {
            wait_until(&format!("node {port} answers PING"), async || {
                cluster.query::<String>(port, redis::cmd("PING")).await.ok() == Some("PONG".into())
            })
            .await;
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .expect("redis-cli must be installed (apt-get install redis-tools)");
        assert!(created.success(), "redis-cli --cluster create failed");
        for port in cluster.ports.clone() {
            wait_until(&format!("node {port} says cluster_state:ok"), async || {
                let info: Option<String> = cluster
                    .query(port, redis::cmd("CLUSTER").arg("INFO").clone())
                    .await
                    .ok();
                info.is_some_and(|i| i.contains("cluster_state:ok"))
            })
            .await;
        }
        cluster.url = format!("redis://127.0.0.1:{}", cluster.ports[0]);
        cluster
    }

    /// One command to the node on `port` (no redirection following).
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        port: u16,
        cmd: redis::Cmd,
    ) -> redis::RedisResult<T> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        cmd.query_async(&mut conn).await
    }

    /// The port of the master that holds `key`'s slot.
    pub async fn owner(&self, key: &str) -> u16 {
        let slot: u16 = self
            .query(
                self.ports[0],
                redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).clone(),
            )
            .await
            .unwrap();
        for &port in &self.ports {
            let mine: i64 = self
                .query(
                    port,
                    redis::cmd("CLUSTER")
                        .arg("COUNTKEYSINSLOT")
                        .arg(slot)
                        .clone(),
                )
                .await
                .unwrap();
            let exists: redis::RedisResult<i64> = self
                .query(port, redis::cmd("EXISTS").arg(key).clone())
                .await;
            if mine > 0 && exists == Ok(1) {
                return port;
            }
        }
        panic!("no master holds {key}");
    }

    pub async fn node_id(&self, port: u16) -> String {
        self.query(port, redis::cmd("CLUSTER").arg("MYID").clone())
            .await
            .unwrap()
    }

    /// Starts moving `key`'s slot from `from` to `to` and moves every key of
    /// the slot: from now on `from` answers ASK for them. [`finish_move`]
    /// ends it.
    pub async fn begin_move(&self, key: &str, from: u16, to: u16) -> u16 {
        let slot: u16 = self
            .query(from, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).clone())
            .await
            .unwrap();
        let (from_id, to_id) = (self.node_id(from).await, self.node_id(to).await);
        let setslot = |state: &str, id: &str| {
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(state)
                .arg(id)
                .clone()
        };
        let () = self
            .query(to, setslot("IMPORTING", &from_id))
            .await
            .unwrap();
        let () = self
            .query(from, setslot("MIGRATING", &to_id))
            .await
            .unwrap();
        let keys: Vec<String> = self
            .query(
                from,
                redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(slot)
                    .arg(1000)
                    .clone(),
            )
            .await
            .unwrap();
        let () = self
            .query(
                from,
                redis::cmd("MIGRATE")
                    .arg("127.0.0.1")
                    .arg(to)
                    .arg("")
                    .arg(0)
                    .arg(5000)
                    .arg("KEYS")
                    .arg(&keys)
                    .clone(),
            )
            .await
            .unwrap();
        slot
    }

    /// Ends a move: every node learns that `slot` is served by `to`.
    pub async fn finish_move(&self, slot: u16, to: u16) {
        let to_id = self.node_id(to).await;
        let mut order = vec![to];
        order.extend(self.ports.iter().copied().filter(|&p| p != to));
        for port in order {
            let () = self
                .query(
                    port,
                    redis::cmd("CLUSTER")
                        .arg("SETSLOT")
                        .arg(slot)
                        .arg("NODE")
                        .arg(&to_id)
                        .clone(),
                )
                .await
                .unwrap();
        }
    }
}

/// A TCP port nobody listens on now (the kernel's pick).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `condition` every 20 ms until it holds; fails after 30 s.
pub async fn wait_until(what: &str, condition: impl AsyncFn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
