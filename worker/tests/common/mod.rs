//! Shared by the session test binaries: a real `redis-server` on a unix socket
//! in a temp dir, or a real three-master Redis Cluster, ready before it is
//! returned, killed on drop; and [`TestStore`], the store one test uses.

// Each test binary uses a part of this.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A store for one test: its URL, a key prefix of its own (so tests sharing
/// a store never see each other's keys), and — when the test started it —
/// the redis-server process, killed on drop.
pub struct TestStore {
    pub url: String,
    pub prefix: String,
    pub server: Option<RedisServer>,
}

static NEXT_STORE: AtomicUsize = AtomicUsize::new(0);

impl TestStore {
    /// The store named by `APPVISOR_TEST_STORE_URL` (e.g. appvisor's
    /// embedded one) if set, else [`own`](Self::own).
    pub async fn start(tag: &str, extra: &[&str]) -> TestStore {
        match std::env::var("APPVISOR_TEST_STORE_URL") {
            Ok(url) if !url.is_empty() => TestStore {
                url,
                prefix: Self::next_prefix(tag).1,
                server: None,
            },
            _ => Self::own(tag, extra).await,
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
            server: Some(server),
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
