//! What a handler works with: the locked keyspace, the caller's connection state
//! and reply writer ([`Ctx`]), and the argument checks every handler shares.

use super::super::client::Client;
use super::super::keyspace::{Db, Keyspace};
use super::super::resp::Reply;
use super::super::state::ServerState;

/// Everything a handler may touch while the keyspace is locked.
pub(crate) struct Ctx<'a> {
    pub ks: &'a mut Keyspace,
    pub client: &'a mut Client,
    pub out: Reply<'a>,
    /// Unix ms, read once per batch of requests.
    pub now: u64,
    pub server: &'a ServerState,
}

impl<'a> Ctx<'a> {
    /// The caller's namespace (only for commands that require authentication).
    pub(super) fn db_id(&self) -> usize {
        self.client
            .db
            .expect("the dispatcher only runs data commands once authenticated")
    }

    /// The caller's namespace and the reply writer, borrowed together.
    pub(super) fn db_out(&mut self) -> (&mut Db, &mut Reply<'a>) {
        let id = self.db_id();
        (&mut self.ks.dbs[id], &mut self.out)
    }

    /// Appends a record to the log (`parts[0]` is the op; the app is inserted).
    pub(super) fn log(&mut self, op: &[u8], rest: &[&[u8]]) {
        if !self.ks.logging {
            return;
        }
        let id = self.db_id();
        let name = self.ks.dbs[id].name.clone();
        let mut parts: [&[u8]; 6] = [op, name.as_bytes(), b"", b"", b"", b""];
        parts[2..2 + rest.len()].copy_from_slice(rest);
        super::super::resp::encode_command(&mut self.ks.log, &parts[..2 + rest.len()]);
    }

    pub(super) fn log_set(&mut self, key: &[u8], value: &[u8], expires_at: u64) {
        if expires_at == 0 {
            self.log(b"SET", &[key, value]);
        } else {
            let mut digits = itoa::Buffer::new();
            self.log(
                b"SET",
                &[key, value, b"PXAT", digits.format(expires_at).as_bytes()],
            );
        }
    }
}

/// Case-insensitive equality with an upper-case ASCII option name.
pub(super) fn is(arg: &[u8], option: &str) -> bool {
    arg.eq_ignore_ascii_case(option.as_bytes())
}

pub(super) const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";
pub(super) const SYNTAX: &str = "ERR syntax error";

pub(super) fn parse_int(arg: &[u8]) -> Option<i64> {
    super::super::resp::parse_i64(arg)
}
