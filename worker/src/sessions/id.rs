//! Session ids: 144 bits from the OS CSPRNG, written as 24 URL-safe base64
//! characters without padding.
//!
//! 144 bits (18 bytes) rather than 128 because 18 bytes fill exactly 24
//! base64 characters: every 24-character string over the alphabet is then a
//! canonical id, and the format check is just length + charset. ASP.NET used
//! 120 bits. The fixed length bounds what a cookie can make us look up.

use std::fmt;

/// Length of every session id, in characters.
pub const SESSION_ID_LEN: usize = 24;
const ID_BYTES: usize = 18;
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A well-formed session id. It is a bearer secret: `Debug` shows only its
/// first four characters; [`as_str`](Self::as_str) gives the whole thing.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId([u8; SESSION_ID_LEN]);

/// Why a string is not a session id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSessionId {
    /// Ids are exactly [`SESSION_ID_LEN`] characters.
    #[error("a session id has {SESSION_ID_LEN} characters, this one has {len}")]
    WrongLength {
        /// Length of the rejected string, in bytes.
        len: usize,
    },
    /// Only `A-Z a-z 0-9 - _` appear in ids.
    #[error("a session id uses only A-Z a-z 0-9 - _; byte {at} is not one of them")]
    BadCharacter {
        /// Byte offset of the first bad character.
        at: usize,
    },
}

impl SessionId {
    /// A fresh id from the operating system's CSPRNG (`getrandom(2)`).
    pub fn generate() -> Result<SessionId, std::io::Error> {
        let mut raw = [0u8; ID_BYTES];
        getrandom::fill(&mut raw)?;
        Ok(Self::from_bytes(&raw))
    }

    fn from_bytes(raw: &[u8; ID_BYTES]) -> SessionId {
        let mut out = [0u8; SESSION_ID_LEN];
        for (group, chunk) in raw.chunks_exact(3).enumerate() {
            let n = (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]);
            for i in 0..4 {
                out[group * 4 + i] = ALPHABET[((n >> (18 - 6 * i)) & 63) as usize];
            }
        }
        SessionId(out)
    }

    /// Accepts exactly the strings [`generate`](Self::generate) can produce.
    /// The length is checked before anything else, so a huge cookie costs
    /// nothing.
    pub fn parse(text: &str) -> Result<SessionId, InvalidSessionId> {
        let bytes = text.as_bytes();
        if bytes.len() != SESSION_ID_LEN {
            return Err(InvalidSessionId::WrongLength { len: bytes.len() });
        }
        if let Some(at) = bytes
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_'))
        {
            return Err(InvalidSessionId::BadCharacter { at });
        }
        let mut out = [0u8; SESSION_ID_LEN];
        out.copy_from_slice(bytes);
        Ok(SessionId(out))
    }

    /// The id as it goes into a cookie or a store key.
    pub fn as_str(&self) -> &str {
        // Only ALPHABET bytes are ever stored, all ASCII.
        std::str::from_utf8(&self.0).expect("session ids are ASCII")
    }

    /// A short, non-secret form for logs and error messages.
    pub fn redacted(&self) -> String {
        format!("{}…", &self.as_str()[..4])
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.redacted())
    }
}

impl std::str::FromStr for SessionId {
    type Err = InvalidSessionId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionId::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_matches_base64url() {
        // 18 bytes of 0xff → 24 '_'; known vector "foobar" ×3.
        assert_eq!(SessionId::from_bytes(&[0xff; 18]).as_str(), "_".repeat(24));
        let raw: [u8; 18] = *b"foobarfoobarfoobar";
        assert_eq!(
            SessionId::from_bytes(&raw).as_str(),
            "Zm9vYmFyZm9vYmFyZm9vYmFy"
        );
    }

    #[test]
    fn generated_ids_round_trip_and_differ() {
        let a = SessionId::generate().unwrap();
        let b = SessionId::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(SessionId::parse(a.as_str()).unwrap(), a);
        assert!(!format!("{a:?}").contains(a.as_str()));
    }
}
