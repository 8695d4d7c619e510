//! Connection commands: AUTH, HELLO, PING, ECHO, SELECT, CLIENT, QUIT, RESET.

use super::super::args::Args;
use super::ctx::{is, parse_int, Ctx, NOT_AN_INTEGER, SYNTAX};

/// The Redis version announced by HELLO and INFO. Clients gate features on it;
/// the store implements the 7.0 behaviour of the commands it has.
pub(crate) const REDIS_COMPAT_VERSION: &str = "7.0.0";

const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// Logs the connection in; on failure it keeps its previous login, and the error
/// to answer is returned. A first login moves the connection from the
/// anonymous quota to max_clients; if that is full it is closed after the reply.
fn login(ctx: &mut Ctx<'_>, user: Option<&[u8]>, password: &[u8]) -> Result<(), &'static str> {
    let Some(db) = ctx.ks.authenticate(user, password) else {
        // The user name only: never the password.
        tracing::debug!(
            "refused a login as {:?}: unknown app or wrong token",
            user.map(String::from_utf8_lossy)
                .unwrap_or("default".into())
        );
        return Err(WRONGPASS);
    };
    if let Err(refusal) = ctx.client.seat.promote() {
        tracing::debug!(
            "refused a login: {} clients are logged in (max_clients)",
            ctx.server.seats.max_clients
        );
        ctx.client.closing = true;
        return Err(refusal.reply());
    }
    if ctx.client.db != Some(db) {
        // Watches and subscriptions belong to the namespace they were made in.
        ctx.client.detach(ctx.ks);
    }
    ctx.client.db = Some(db);
    Ok(())
}

pub(super) fn auth(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let ok = match args.len() {
        2 => login(ctx, None, args.get(1)),
        3 => login(ctx, Some(args.get(1)), args.get(2)),
        _ => return ctx.out.error(SYNTAX),
    };
    match ok {
        Ok(()) => ctx.out.ok(),
        Err(msg) => ctx.out.error(msg),
    }
}

pub(super) fn hello(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let mut resp3 = ctx.client.resp3;
    if args.len() >= 2 {
        match parse_int(args.get(1)) {
            Some(2) => resp3 = false,
            Some(3) => resp3 = true,
            Some(_) => return ctx.out.error("NOPROTO unsupported protocol version"),
            None => {
                return ctx
                    .out
                    .error("ERR Protocol version is not an integer or out of range")
            }
        }
    }
    let mut credentials = None;
    let mut name = None;
    let mut i = 2;
    while i < args.len() {
        let opt = args.get(i);
        if is(opt, "AUTH") && i + 2 < args.len() {
            credentials = Some((args.get(i + 1), args.get(i + 2)));
            i += 3;
        } else if is(opt, "SETNAME") && i + 1 < args.len() {
            name = Some(args.get(i + 1));
            i += 2;
        } else {
            return ctx.out.error(&format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(opt)
            ));
        }
    }
    if let Some((user, password)) = credentials {
        if let Err(msg) = login(ctx, Some(user), password) {
            return ctx.out.error(msg);
        }
    }
    if ctx.client.db.is_none() {
        return ctx.out.error(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
        );
    }
    if let Some(name) = name {
        if !valid_client_name(name) {
            return ctx.out.error(BAD_NAME);
        }
        ctx.client.name = (!name.is_empty()).then(|| name.to_vec());
    }
    ctx.client.resp3 = resp3;
    ctx.out.resp3 = resp3;
    let out = &mut ctx.out;
    out.map(7);
    out.bulk_str("server");
    out.bulk_str("redis");
    out.bulk_str("version");
    out.bulk_str(REDIS_COMPAT_VERSION);
    out.bulk_str("proto");
    out.int(if resp3 { 3 } else { 2 });
    out.bulk_str("id");
    out.int(ctx.client.id as i64);
    out.bulk_str("mode");
    out.bulk_str("standalone");
    out.bulk_str("role");
    out.bulk_str("master");
    out.bulk_str("modules");
    out.array(0);
}

pub(super) fn ping(ctx: &mut Ctx<'_>, args: Args<'_>) {
    if args.len() > 2 {
        return ctx
            .out
            .error("ERR wrong number of arguments for 'ping' command");
    }
    if !ctx.client.resp3 && ctx.client.subscriptions() > 0 {
        ctx.out.array(2);
        ctx.out.bulk(b"pong");
        ctx.out
            .bulk(if args.len() == 2 { args.get(1) } else { b"" });
    } else if args.len() == 2 {
        ctx.out.bulk(args.get(1));
    } else {
        ctx.out.simple("PONG");
    }
}

pub(super) fn echo(ctx: &mut Ctx<'_>, args: Args<'_>) {
    ctx.out.bulk(args.get(1));
}

pub(super) fn select(ctx: &mut Ctx<'_>, args: Args<'_>) {
    match parse_int(args.get(1)) {
        Some(0) => ctx.out.ok(),
        Some(_) => ctx.out.error("ERR DB index is out of range"),
        None => ctx.out.error(NOT_AN_INTEGER),
    }
}

const BAD_NAME: &str = "ERR Client names cannot contain spaces, newlines or special characters.";

fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

pub(super) fn client(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let sub = args.get(1);
    let n = args.len();
    if is(sub, "ID") && n == 2 {
        ctx.out.int(ctx.client.id as i64);
    } else if is(sub, "SETNAME") && n == 3 {
        let name = args.get(2);
        if !valid_client_name(name) {
            return ctx.out.error(BAD_NAME);
        }
        ctx.client.name = (!name.is_empty()).then(|| name.to_vec());
        ctx.out.ok();
    } else if is(sub, "GETNAME") && n == 2 {
        match &ctx.client.name {
            Some(name) => ctx.out.bulk(name),
            None => ctx.out.null(),
        }
    } else if (is(sub, "SETINFO") && n == 4)
        || ((is(sub, "NO-EVICT") || is(sub, "NO-TOUCH")) && n == 3)
    {
        // Library name/version and eviction hints: accepted, nothing to do.
        ctx.out.ok();
    } else if (is(sub, "INFO") || is(sub, "LIST")) && n == 2 {
        let name = ctx
            .client
            .name
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let app = ctx
            .client
            .db
            .map(|d| ctx.ks.dbs[d].name.to_string())
            .unwrap_or_default();
        let line = format!(
            "id={} name={} user={} db=0 sub={} psub={} multi={} resp={}\n",
            ctx.client.id,
            name,
            app,
            ctx.client.channels.len(),
            ctx.client.patterns.len(),
            ctx.client
                .multi
                .as_ref()
                .map_or(-1, |m| m.queued.len() as i64),
            if ctx.client.resp3 { 3 } else { 2 },
        );
        ctx.out.verbatim(&line);
    } else {
        ctx.out.error(&format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
            String::from_utf8_lossy(sub)
        ));
    }
}

pub(super) fn quit(ctx: &mut Ctx<'_>, _args: Args<'_>) {
    ctx.client.closing = true;
    ctx.out.ok();
}

pub(super) fn reset(ctx: &mut Ctx<'_>, _args: Args<'_>) {
    ctx.client.detach(ctx.ks);
    ctx.client.db = ctx.client.socket_db;
    ctx.client.resp3 = false;
    ctx.out.resp3 = false;
    ctx.client.name = None;
    ctx.out.simple("RESET");
}
