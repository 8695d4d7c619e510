//! How a session is laid out as one store value.
//!
//! `as1 <version>\n<JSON object>`: a short header carrying the optimistic
//! version, then the data as JSON. One plain string per session (rather than
//! a hash, or a second key for the version) because the embedded store
//! speaks strings, one key keeps GETEX/SET atomic without scripts, and the
//! header lets a bulk flush read a stored version without parsing the JSON.
//! Humans can read it with `redis-cli GET`, and any language can write it.

use serde_json::{Map, Value};

const MAGIC: &[u8] = b"as1 ";

/// A session as stored: its version and its data.
pub(crate) type Stored = (u64, Map<String, Value>);

pub(crate) fn encode(version: u64, data: &Map<String, Value>) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + data.len() * 16);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(version.to_string().as_bytes());
    out.push(b'\n');
    // Writing a Map of Values to a Vec cannot fail.
    serde_json::to_writer(&mut out, data).expect("JSON maps always serialize");
    out
}

/// The version alone, without parsing the data.
pub(crate) fn decode_version(raw: &[u8]) -> Result<(u64, &[u8]), String> {
    let rest = raw
        .strip_prefix(MAGIC)
        .ok_or_else(|| "it does not start with the `as1 ` header".to_owned())?;
    let newline = rest
        .iter()
        .take(21)
        .position(|b| *b == b'\n')
        .ok_or_else(|| "its header has no version line".to_owned())?;
    let version = std::str::from_utf8(&rest[..newline])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| "its version is not a number".to_owned())?;
    Ok((version, &rest[newline + 1..]))
}

pub(crate) fn decode(raw: &[u8]) -> Result<Stored, String> {
    let (version, body) = decode_version(raw)?;
    let data: Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| format!("its data is not a JSON object: {e}"))?;
    Ok((version, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip_and_rejection() {
        let data = json!({"n": 3, "name": "ada"}).as_object().unwrap().clone();
        let raw = encode(42, &data);
        assert!(raw.starts_with(b"as1 42\n{"));
        assert_eq!(decode(&raw).unwrap(), (42, data));
        assert_eq!(decode_version(&raw).unwrap().0, 42);
        assert!(decode(b"hello").is_err());
        assert!(decode(b"as1 x\n{}").is_err());
        assert!(decode(b"as1 1\n[1]").is_err());
    }
}
