//! The URL a worker is given (`APPVISOR_STORE_URL`).
//!
//! There is no unix-socket URL with credentials that both common clients read:
//!
//! - the Rust `redis` crate (0.32, `url_to_unix_connection_info`) takes the
//!   credentials only from the query, `unix:///path?user=U&pass=P`, and ignores
//!   `user:pass@` there;
//! - redis-py (`redis.connection.parse_url`) takes them from `unix://U:P@/path`,
//!   and passes unknown query keys to the connection class, so `?user=…&pass=…`
//!   fails with `TypeError: unexpected keyword argument 'user'`.
//!
//! So a worker's URL names its app's own socket, where connections are logged in
//! as that app by the socket itself, and carries the credentials as `user:pass@`
//! as well: redis-py sends `AUTH app token` (accepted), the Rust crate sends
//! nothing (already logged in). `localhost` stands in the host position because
//! the `url` crate rejects credentials with an empty host, and both clients ignore
//! the host of a unix URL. The integration tests drive both clients with it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

/// `unix://APP:TOKEN@localhost/abs/path.sock`
pub(crate) fn unix_url(socket: &Path, app: &str, password: &str) -> String {
    let mut url = format!(
        "unix://{}:{}@localhost",
        encode(app.as_bytes(), false),
        encode(password.as_bytes(), false)
    );
    url.push_str(&encode(socket.as_os_str().as_encoded_bytes(), true));
    url
}

/// `redis://APP:TOKEN@127.0.0.1:6390/0`
pub(crate) fn tcp_url(addr: SocketAddr, app: &str, password: &str) -> String {
    format!(
        "redis://{}:{}@{addr}/0",
        encode(app.as_bytes(), false),
        encode(password.as_bytes(), false)
    )
}

/// Percent-encodes all but RFC 3986 unreserved bytes (and `/` in a path).
fn encode(bytes: &[u8], path: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (path && b == b'/')
        {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(
            unix_url(Path::new("/run/app visor/store/shop.sock"), "shop", "t0k+n"),
            "unix://shop:t0k%2Bn@localhost/run/app%20visor/store/shop.sock"
        );
        assert_eq!(
            tcp_url("127.0.0.1:6390".parse().unwrap(), "shop", "tok"),
            "redis://shop:tok@127.0.0.1:6390/0"
        );
    }
}
