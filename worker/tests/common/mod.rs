//! Shared by the session test binaries: a real `redis-server` on a unix socket
//! in a temp dir, ready (answers PING) before it is returned, killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    dir: PathBuf,
    #[allow(dead_code)] // not every test binary needs the path
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
