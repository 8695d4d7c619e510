//! The command table and the checks every command passes before it runs: known
//! name, arity, authentication, pub/sub context, MULTI queueing, memory limit,
//! log health. Handlers live by theme in the submodules.
//!
//! Arity follows Redis's convention: `n > 0` means exactly n words including the
//! name, `n < 0` means at least `-n`.

mod connection;
mod ctx;
mod keys;
mod server;
mod subscribe;
mod transaction;

use std::sync::atomic::Ordering;

use super::args::Args;
use super::client::Queued;

pub(crate) use ctx::Ctx;

type Handler = fn(&mut Ctx<'_>, Args<'_>);

/// Allowed before AUTH.
const NO_AUTH: u16 = 1;
/// May change data (refused while the log cannot be written).
const WRITE: u16 = 1 << 1;
/// May grow memory (refused past max_memory).
const DENY_OOM: u16 = 1 << 2;
/// Allowed in RESP2 subscribed mode.
const PUBSUB_CONTEXT: u16 = 1 << 3;
/// Runs at once inside MULTI instead of being queued.
const TX_CONTROL: u16 = 1 << 4;
/// Read-only (for COMMAND's flag list).
const READONLY: u16 = 1 << 5;

pub(crate) struct Spec {
    pub name: &'static str,
    pub arity: i32,
    flags: u16,
    /// First key, last key (-1: through the end), step; 0,0,0 for no keys.
    keys: (i32, i32, i32),
    handler: Handler,
}

impl Spec {
    fn arity_ok(&self, n: usize) -> bool {
        let n = n as i32;
        if self.arity >= 0 {
            n == self.arity
        } else {
            n >= -self.arity
        }
    }

    fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    /// Redis's flag words, for COMMAND.
    pub fn flag_names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.has(WRITE) {
            names.push("write");
        }
        if self.has(READONLY) {
            names.push("readonly");
        }
        if self.has(DENY_OOM) {
            names.push("denyoom");
        }
        if self.has(NO_AUTH) {
            names.push("no_auth");
        }
        if self.has(PUBSUB_CONTEXT) {
            names.push("pubsub");
        }
        names.push("fast");
        names
    }

    pub fn key_positions(&self) -> (i32, i32, i32) {
        self.keys
    }
}

const fn spec(
    name: &'static str,
    arity: i32,
    flags: u16,
    keys: (i32, i32, i32),
    handler: Handler,
) -> Spec {
    Spec {
        name,
        arity,
        flags,
        keys,
        handler,
    }
}

const NONE: (i32, i32, i32) = (0, 0, 0);
const ONE: (i32, i32, i32) = (1, 1, 1);
const ALL: (i32, i32, i32) = (1, -1, 1);

/// Every command, the hot ones first (lookup is a scan).
pub(crate) static COMMANDS: &[Spec] = &[
    spec("get", 2, READONLY, ONE, keys::get),
    spec("set", -3, WRITE | DENY_OOM, ONE, keys::set),
    spec("getex", -2, WRITE, ONE, keys::getex),
    spec("del", -2, WRITE, ALL, keys::del),
    spec("expire", -3, WRITE, ONE, keys::expire),
    spec("pexpire", -3, WRITE, ONE, keys::expire),
    spec("expireat", -3, WRITE, ONE, keys::expire),
    spec("pexpireat", -3, WRITE, ONE, keys::expire),
    spec("exists", -2, READONLY, ALL, keys::exists),
    spec("mget", -2, READONLY, ALL, keys::mget),
    spec("mset", -3, WRITE | DENY_OOM, (1, -1, 2), keys::mset),
    spec("setex", 4, WRITE | DENY_OOM, ONE, keys::setex),
    spec("psetex", 4, WRITE | DENY_OOM, ONE, keys::setex),
    spec("setnx", 3, WRITE | DENY_OOM, ONE, keys::setnx),
    spec("getdel", 2, WRITE, ONE, keys::getdel),
    spec("unlink", -2, WRITE, ALL, keys::del),
    spec("ttl", 2, READONLY, ONE, keys::ttl),
    spec("pttl", 2, READONLY, ONE, keys::ttl),
    spec("expiretime", 2, READONLY, ONE, keys::ttl),
    spec("pexpiretime", 2, READONLY, ONE, keys::ttl),
    spec("persist", 2, WRITE, ONE, keys::persist),
    spec("touch", -2, READONLY, ALL, keys::exists),
    spec("type", 2, READONLY, ONE, keys::type_of),
    spec("scan", -2, READONLY, NONE, keys::scan),
    spec("keys", 2, READONLY, NONE, keys::keys),
    spec("dbsize", 1, READONLY, NONE, keys::dbsize),
    spec("flushdb", -1, WRITE, NONE, keys::flushdb),
    spec("flushall", -1, WRITE, NONE, keys::flushdb),
    spec("ping", -1, PUBSUB_CONTEXT, NONE, connection::ping),
    spec("echo", 2, 0, NONE, connection::echo),
    spec("auth", -2, NO_AUTH, NONE, connection::auth),
    spec("hello", -1, NO_AUTH, NONE, connection::hello),
    spec("select", 2, 0, NONE, connection::select),
    spec("client", -2, 0, NONE, connection::client),
    spec(
        "quit",
        -1,
        NO_AUTH | PUBSUB_CONTEXT | TX_CONTROL,
        NONE,
        connection::quit,
    ),
    spec(
        "reset",
        1,
        NO_AUTH | PUBSUB_CONTEXT | TX_CONTROL,
        NONE,
        connection::reset,
    ),
    spec("multi", 1, TX_CONTROL, NONE, transaction::multi),
    spec("exec", 1, TX_CONTROL, NONE, transaction::exec),
    spec("discard", 1, TX_CONTROL, NONE, transaction::discard),
    spec("watch", -2, TX_CONTROL, ALL, transaction::watch),
    spec("unwatch", 1, 0, NONE, transaction::unwatch),
    spec("subscribe", -2, PUBSUB_CONTEXT, NONE, subscribe::subscribe),
    spec(
        "psubscribe",
        -2,
        PUBSUB_CONTEXT,
        NONE,
        subscribe::psubscribe,
    ),
    spec(
        "unsubscribe",
        -1,
        PUBSUB_CONTEXT,
        NONE,
        subscribe::unsubscribe,
    ),
    spec(
        "punsubscribe",
        -1,
        PUBSUB_CONTEXT,
        NONE,
        subscribe::punsubscribe,
    ),
    spec("publish", 3, 0, NONE, subscribe::publish),
    spec("info", -1, 0, NONE, server::info),
    spec("command", -1, 0, NONE, server::command),
    spec("config", -2, 0, NONE, server::config),
    spec("time", 1, 0, NONE, server::time),
    spec("bgrewriteaof", 1, 0, NONE, server::bgrewriteaof),
];

pub(crate) fn lookup(name: &[u8]) -> Option<&'static Spec> {
    COMMANDS
        .iter()
        .find(|c| c.name.len() == name.len() && c.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Runs one request (or queues it inside MULTI), writing its reply.
pub(crate) fn execute(ctx: &mut Ctx<'_>, args: Args<'_>) {
    if args.len() == 0 {
        return;
    }
    let name = args.get(0);
    let Some(spec) = lookup(name) else {
        ctx.out.error(&unknown_command(args));
        ctx.client.flag_multi_error();
        return;
    };
    if !spec.arity_ok(args.len()) {
        ctx.out.error(&format!(
            "ERR wrong number of arguments for '{}' command",
            spec.name
        ));
        ctx.client.flag_multi_error();
        return;
    }
    if ctx.client.db.is_none() && !spec.has(NO_AUTH) {
        ctx.out.error("NOAUTH Authentication required.");
        ctx.client.flag_multi_error();
        return;
    }
    if !ctx.client.resp3 && ctx.client.subscriptions() > 0 && !spec.has(PUBSUB_CONTEXT) {
        ctx.out.error(&format!(
            "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
            spec.name
        ));
        return;
    }
    if spec.has(DENY_OOM) && ctx.server.over_memory(ctx.ks) {
        ctx.out
            .error("OOM command not allowed when used memory > 'maxmemory'.");
        ctx.client.flag_multi_error();
        return;
    }
    if let Some(multi) = &mut ctx.client.multi {
        if !spec.has(TX_CONTROL) {
            // Queued commands are copies held until EXEC: memory as much as
            // queued replies, so they share max_output's bound.
            let queued = Queued::copy(args);
            if multi.bytes + queued.size() > ctx.server.max_output {
                multi.failed = true;
                ctx.out.error(&format!(
                    "ERR MULTI queue larger than the store's max_output of {} bytes; the transaction will be discarded",
                    ctx.server.max_output
                ));
                return;
            }
            multi.bytes += queued.size();
            multi.queued.push(queued);
            ctx.out.simple("QUEUED");
            return;
        }
    }
    if spec.has(WRITE) && ctx.server.log.failed.load(Ordering::Relaxed) {
        ctx.out.error(
            "MISCONF Errors writing to the append-only log; writes are refused until it can be written again (see the supervisor's log).",
        );
        return;
    }
    (spec.handler)(ctx, args);
}

/// Redis's wording: `ERR unknown command 'xyz', with args beginning with: 'a' 'b' `.
fn unknown_command(args: Args<'_>) -> String {
    let mut msg = format!(
        "ERR unknown command '{}', with args beginning with: ",
        shown(args.get(0))
    );
    for arg in args.rest(1) {
        if msg.len() > 128 {
            break;
        }
        msg.push('\'');
        msg.push_str(&shown(arg));
        msg.push_str("' ");
    }
    msg
}

/// An argument quoted in an error, cut at 128 bytes, lossy UTF-8.
fn shown(arg: &[u8]) -> String {
    String::from_utf8_lossy(&arg[..arg.len().min(128)]).into_owned()
}
