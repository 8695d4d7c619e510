//! Redis Cluster: which node holds a key, and where the nodes are.
//!
//! A cluster splits the keyspace into 16,384 hash slots; a key's slot is the
//! CRC16 (XMODEM) of the key — or of its *hash tag*, the part between the
//! first `{` and the next `}`, when that part is not empty — modulo 16,384.
//! Every master serves some ranges of slots, which `CLUSTER SLOTS` lists; a
//! node asked for a key it does not serve answers `MOVED <slot> <host:port>`
//! (the slot has moved for good) or, while a slot is being migrated,
//! `ASK <slot> <host:port>` (this one key is already there: send `ASKING`
//! first).
//!
//! This module is the pure part of that: slot hashing, the `CLUSTER SLOTS`
//! reply, redirection addresses, and the connection settings for a node
//! derived from the seed URL (same credentials, database 0, same TLS
//! settings). The routing itself lives in the `store` module.

use redis::{ConnectionAddr, ConnectionInfo, Value};

/// Hash slots in a Redis Cluster.
pub(crate) const SLOTS: usize = 16_384;

/// The hash slot of `key`, as `CLUSTER KEYSLOT` computes it.
pub(crate) fn slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key)) % SLOTS as u16
}

/// The part of `key` that is hashed: the first non-empty `{…}`, else all.
fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    match key[open + 1..].iter().position(|&b| b == b'}') {
        Some(len) if len > 0 => &key[open + 1..open + 1 + len],
        _ => key,
    }
}

/// CRC-16/XMODEM (polynomial 0x1021, initial 0), the variant Redis Cluster
/// uses. Bitwise: keys are short and this runs once per session operation.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// A range of slots and the master that serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub host: String,
    pub port: u16,
}

/// Reads a `CLUSTER SLOTS` reply. A master listed with an empty or `?` host
/// (the node does not know its own address) is at `asked_host`, the host the
/// reply came from.
pub(crate) fn parse_slots(reply: &Value, asked_host: &str) -> Result<Vec<SlotRange>, String> {
    let Value::Array(ranges) = reply else {
        return Err(format!("CLUSTER SLOTS answered {reply:?}, not an array"));
    };
    let mut out = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(fields) = range else {
            return Err(format!("CLUSTER SLOTS: {range:?} is not a slot range"));
        };
        let (Some(start), Some(end), Some(Value::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return Err(format!(
                "CLUSTER SLOTS: {range:?} lacks start, end or master"
            ));
        };
        let (Some(start), Some(end)) = (slot_number(start), slot_number(end)) else {
            return Err(format!("CLUSTER SLOTS: bad slot numbers in {range:?}"));
        };
        let (Some(host), Some(port)) = (
            master.first().and_then(text),
            master.get(1).and_then(integer),
        ) else {
            return Err(format!("CLUSTER SLOTS: bad master address in {range:?}"));
        };
        let host = if host.is_empty() || host == "?" {
            asked_host.to_owned()
        } else {
            host
        };
        let port = u16::try_from(port).map_err(|_| format!("CLUSTER SLOTS: port {port}"))?;
        out.push(SlotRange {
            start,
            end,
            host,
            port,
        });
    }
    Ok(out)
}

fn slot_number(value: &Value) -> Option<u16> {
    integer(value)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&n| usize::from(n) < SLOTS)
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) | Value::VerbatimString { text: s, .. } => Some(s.clone()),
        _ => None,
    }
}

/// `host:port` of a MOVED/ASK redirection (`[v6]:port` or `v6:port` too). An
/// empty or `?` host means "the host you asked".
pub(crate) fn parse_addr(addr: &str, asked_host: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host.is_empty() || host == "?" {
        asked_host
    } else {
        host
    };
    Some((host.to_owned(), port))
}

/// The host a connection goes to (for redirections that leave it out).
pub(crate) fn host_of(info: &ConnectionInfo) -> &str {
    match &info.addr {
        ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host,
        ConnectionAddr::Unix(_) => "localhost",
    }
}

/// How to reach the node `host:port`: the seed's credentials, protocol and
/// TLS settings, database 0 (a cluster has no other).
pub(crate) fn node_info(seed: &ConnectionInfo, host: &str, port: u16) -> ConnectionInfo {
    let addr = match &seed.addr {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    };
    let mut redis = seed.redis.clone();
    redis.db = 0;
    ConnectionInfo { addr, redis }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster_keyslot() {
        // Reference values from CLUSTER KEYSLOT on redis-server 7.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b""), 0);
        // Hash tags: only the first non-empty {…} counts.
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"{user1000}.followers"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
        assert_eq!(slot(b"{unclosed"), slot(b"{unclosed"));
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn cluster_slots_replies_are_read() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk("10.0.0.1"), Value::Int(7000), bulk("id1")]),
                Value::Array(vec![bulk("10.0.0.4"), Value::Int(7003), bulk("id4")]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                Value::Array(vec![bulk(""), Value::Int(7001), bulk("id2")]),
            ]),
        ]);
        let ranges = parse_slots(&reply, "seed.example").unwrap();
        assert_eq!(
            ranges,
            vec![
                SlotRange {
                    start: 0,
                    end: 5460,
                    host: "10.0.0.1".into(),
                    port: 7000
                },
                SlotRange {
                    start: 5461,
                    end: 16383,
                    host: "seed.example".into(),
                    port: 7001
                },
            ]
        );
        assert!(parse_slots(&Value::Nil, "h").is_err());
        let bad = Value::Array(vec![Value::Array(vec![Value::Int(0), Value::Int(99_999)])]);
        assert!(parse_slots(&bad, "h").is_err());
    }

    #[test]
    fn redirection_addresses() {
        assert_eq!(
            parse_addr("127.0.0.1:7002", "x"),
            Some(("127.0.0.1".into(), 7002))
        );
        assert_eq!(parse_addr(":7002", "seed"), Some(("seed".into(), 7002)));
        assert_eq!(parse_addr("?:7002", "seed"), Some(("seed".into(), 7002)));
        assert_eq!(parse_addr("[::1]:7002", "x"), Some(("::1".into(), 7002)));
        assert_eq!(parse_addr("::1:7002", "x"), Some(("::1".into(), 7002)));
        assert_eq!(parse_addr("nonsense", "x"), None);
    }

    #[test]
    fn nodes_keep_the_seeds_credentials_and_tls() {
        use redis::IntoConnectionInfo;
        let seed = "rediss://app:secret@seed:7000/3"
            .into_connection_info()
            .unwrap();
        let node = node_info(&seed, "10.0.0.2", 7001);
        assert!(matches!(
            node.addr,
            ConnectionAddr::TcpTls { ref host, port: 7001, .. } if host == "10.0.0.2"
        ));
        assert_eq!(node.redis.username.as_deref(), Some("app"));
        assert_eq!(node.redis.password.as_deref(), Some("secret"));
        assert_eq!(node.redis.db, 0);
        let plain = "redis://seed:7000".into_connection_info().unwrap();
        assert!(matches!(
            node_info(&plain, "h", 1).addr,
            ConnectionAddr::Tcp(ref h, 1) if h == "h"
        ));
    }
}
