//! String keys: GET, SET and friends, expiry, SCAN, FLUSHDB. Every mutation
//! appends its effect to the log with absolute expiry times, so replaying the log
//! later does not stretch TTLs by the downtime.

use super::super::args::Args;
use super::super::glob;
use super::ctx::{is, parse_int, Ctx, NOT_AN_INTEGER, SYNTAX};

/// The TTL part of SET/GETEX, before it is made absolute.
enum Ttl {
    /// Leave the key's expiry as it is (GETEX without options, SET KEEPTTL).
    Keep,
    /// Remove any expiry (SET without options, GETEX PERSIST).
    Clear,
    /// Expire at this unix ms.
    At(u64),
}

/// Parses `EX s`, `PX ms`, `EXAT s`, `PXAT ms` at `args[i]`, `args[i+1]`.
/// Errors use Redis's wording for command `cmd`.
fn parse_ttl(option: &[u8], amount: &[u8], now: u64, cmd: &str) -> Result<u64, String> {
    let n = parse_int(amount).ok_or_else(|| NOT_AN_INTEGER.to_owned())?;
    let invalid = || format!("ERR invalid expire time in '{cmd}' command");
    if n <= 0 {
        return Err(invalid());
    }
    let n = n as u64;
    let at = if is(option, "EX") {
        n.checked_mul(1000).and_then(|ms| ms.checked_add(now))
    } else if is(option, "PX") {
        n.checked_add(now)
    } else if is(option, "EXAT") {
        n.checked_mul(1000)
    } else {
        Some(n)
    };
    match at {
        Some(at) if at <= i64::MAX as u64 => Ok(at),
        _ => Err(invalid()),
    }
}

fn is_ttl_option(arg: &[u8]) -> bool {
    is(arg, "EX") || is(arg, "PX") || is(arg, "EXAT") || is(arg, "PXAT")
}

fn value_too_large(ctx: &mut Ctx<'_>, len: usize) -> bool {
    let max = ctx.server.max_value_size;
    if len as u64 > max {
        ctx.out.error(&format!(
            "ERR value of {len} bytes is larger than the store's max_value_size ({max} bytes)"
        ));
        return true;
    }
    false
}

pub(super) fn get(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let now = ctx.now;
    let (db, out) = ctx.db_out();
    match db.get(args.get(1), now) {
        Some(entry) => out.bulk(entry.value()),
        None => out.null(),
    }
}

pub(super) fn set(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let (key, value) = (args.get(1), args.get(2));
    let (mut nx, mut xx, mut want_old) = (false, false, false);
    let mut ttl = Ttl::Clear;
    let mut ttl_given = false;
    let mut i = 3;
    while i < args.len() {
        let opt = args.get(i);
        if is(opt, "NX") && !xx {
            nx = true;
        } else if is(opt, "XX") && !nx {
            xx = true;
        } else if is(opt, "GET") {
            want_old = true;
        } else if is(opt, "KEEPTTL") && !ttl_given {
            ttl = Ttl::Keep;
            ttl_given = true;
        } else if is_ttl_option(opt) && !ttl_given && i + 1 < args.len() {
            match parse_ttl(opt, args.get(i + 1), ctx.now, "set") {
                Ok(at) => ttl = Ttl::At(at),
                Err(e) => return ctx.out.error(&e),
            }
            ttl_given = true;
            i += 1;
        } else {
            return ctx.out.error(SYNTAX);
        }
        i += 1;
    }
    if value_too_large(ctx, value.len()) {
        return;
    }
    let now = ctx.now;
    let (db, out) = ctx.db_out();
    let mut old_expiry = 0;
    let mut exists = false;
    if nx || xx || want_old || matches!(ttl, Ttl::Keep) {
        if let Some(old) = db.get(key, now) {
            exists = true;
            old_expiry = old.expires_at;
            if want_old {
                out.bulk(old.value());
            }
        } else if want_old {
            out.null();
        }
    }
    if (nx && exists) || (xx && !exists) {
        if !want_old {
            out.null();
        }
        return;
    }
    let expires_at = match ttl {
        Ttl::Keep => old_expiry,
        Ttl::Clear => 0,
        Ttl::At(at) => at,
    };
    if expires_at != 0 && expires_at <= now {
        // Already in the past (EXAT/PXAT): the key is gone at once.
        if db.remove(key, now) {
            ctx.log(b"DEL", &[key]);
        }
    } else {
        db.set(key, value, expires_at, now);
        ctx.log_set(key, value, expires_at);
    }
    if !want_old {
        ctx.out.ok();
    }
}

pub(super) fn setex(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let (key, amount, value) = (args.get(1), args.get(2), args.get(3));
    let (option, cmd) = if is(args.get(0), "SETEX") {
        ("EX", "setex")
    } else {
        ("PX", "psetex")
    };
    let at = match parse_ttl(option.as_bytes(), amount, ctx.now, cmd) {
        Ok(at) => at,
        Err(e) => return ctx.out.error(&e),
    };
    if value_too_large(ctx, value.len()) {
        return;
    }
    let now = ctx.now;
    let (db, out) = ctx.db_out();
    db.set(key, value, at, now);
    out.ok();
    ctx.log_set(key, value, at);
}

pub(super) fn setnx(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let (key, value) = (args.get(1), args.get(2));
    if value_too_large(ctx, value.len()) {
        return;
    }
    let now = ctx.now;
    let (db, out) = ctx.db_out();
    if db.contains(key, now) {
        return out.int(0);
    }
    db.set(key, value, 0, now);
    out.int(1);
    ctx.log_set(key, value, 0);
}

pub(super) fn getex(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let key = args.get(1);
    let ttl = match args.len() {
        2 => Ttl::Keep,
        3 if is(args.get(2), "PERSIST") => Ttl::Clear,
        4 if is_ttl_option(args.get(2)) => {
            match parse_ttl(args.get(2), args.get(3), ctx.now, "getex") {
                Ok(at) => Ttl::At(at),
                Err(e) => return ctx.out.error(&e),
            }
        }
        _ => return ctx.out.error(SYNTAX),
    };
    let now = ctx.now;
    let (db, out) = ctx.db_out();
    let Some(entry) = db.get(key, now) else {
        return out.null();
    };
    out.bulk(entry.value());
    let had_expiry = entry.expires_at != 0;
    match ttl {
        Ttl::Keep => {}
        Ttl::Clear => {
            if had_expiry {
                db.set_expiry(key, 0, now);
                ctx.log(b"PERSIST", &[key]);
            }
        }
        Ttl::At(at) if at <= now => {
            db.remove(key, now);
            ctx.log(b"DEL", &[key]);
        }
        Ttl::At(at) => {
            db.set_expiry(key, at, now);
            let mut digits = itoa::Buffer::new();
            ctx.log(b"PEXPIREAT", &[key, digits.format(at).as_bytes()]);
        }
    }
}

pub(super) fn getdel(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let key = args.get(1);
    let now = ctx.now;
    let (db, out) = ctx.db_out();
    match db.take(key, now) {
        Some(entry) => {
            out.bulk(entry.value());
            ctx.log(b"DEL", &[key]);
        }
        None => out.null(),
    }
}

pub(super) fn del(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let now = ctx.now;
    let mut removed = 0;
    for key in args.rest(1) {
        let (db, _) = ctx.db_out();
        if db.remove(key, now) {
            removed += 1;
            ctx.log(b"DEL", &[key]);
        }
    }
    ctx.out.int(removed);
}

/// EXISTS and TOUCH: how many of the keys exist (a key named twice counts twice).
pub(super) fn exists(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let now = ctx.now;
    let (db, out) = ctx.db_out();
    let n = args.rest(1).filter(|key| db.contains(key, now)).count();
    out.int(n as i64);
}

pub(super) fn mget(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let now = ctx.now;
    let (db, out) = ctx.db_out();
    out.array(args.len() - 1);
    for key in args.rest(1) {
        match db.get(key, now) {
            Some(entry) => out.bulk(entry.value()),
            None => out.null(),
        }
    }
}

pub(super) fn mset(ctx: &mut Ctx<'_>, args: Args<'_>) {
    if args.len().is_multiple_of(2) {
        return ctx
            .out
            .error("ERR wrong number of arguments for 'mset' command");
    }
    for i in (2..args.len()).step_by(2) {
        if value_too_large(ctx, args.get(i).len()) {
            return;
        }
    }
    let now = ctx.now;
    for i in (1..args.len()).step_by(2) {
        let (key, value) = (args.get(i), args.get(i + 1));
        let (db, _) = ctx.db_out();
        db.set(key, value, 0, now);
        ctx.log_set(key, value, 0);
    }
    ctx.out.ok();
}

/// EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT with NX | XX | GT | LT.
pub(super) fn expire(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let name = args.get(0);
    let (relative, unit_ms, cmd) = if is(name, "EXPIRE") {
        (true, 1000, "expire")
    } else if is(name, "PEXPIRE") {
        (true, 1, "pexpire")
    } else if is(name, "EXPIREAT") {
        (false, 1000, "expireat")
    } else {
        (false, 1, "pexpireat")
    };
    let Some(n) = parse_int(args.get(2)) else {
        return ctx.out.error(NOT_AN_INTEGER);
    };
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in args.rest(3) {
        if is(opt, "NX") {
            nx = true;
        } else if is(opt, "XX") {
            xx = true;
        } else if is(opt, "GT") {
            gt = true;
        } else if is(opt, "LT") {
            lt = true;
        } else {
            return ctx.out.error(&format!(
                "ERR Unsupported option {}",
                String::from_utf8_lossy(opt)
            ));
        }
    }
    if nx && (xx || gt || lt) {
        return ctx
            .out
            .error("ERR NX and XX, GT or LT options at the same time are not compatible");
    }
    if gt && lt {
        return ctx
            .out
            .error("ERR GT and LT options at the same time are not compatible");
    }
    let now = ctx.now as i64;
    let at = n.checked_mul(unit_ms).and_then(|ms| {
        if relative {
            ms.checked_add(now)
        } else {
            Some(ms)
        }
    });
    let Some(at) = at else {
        return ctx
            .out
            .error(&format!("ERR invalid expire time in '{cmd}' command"));
    };
    let key = args.get(1);
    let (db, out) = ctx.db_out();
    let Some(entry) = db.get(key, now as u64) else {
        return out.int(0);
    };
    let current = entry.expires_at;
    // No expiry counts as an infinite TTL for GT and LT, as in Redis.
    let allowed = !((nx && current != 0)
        || (xx && current == 0)
        || (gt && (current == 0 || at <= current as i64))
        || (lt && current != 0 && at >= current as i64));
    if !allowed {
        return out.int(0);
    }
    out.int(1);
    if at <= now {
        db.remove(key, now as u64);
        ctx.log(b"DEL", &[key]);
    } else {
        db.set_expiry(key, at as u64, now as u64);
        let mut digits = itoa::Buffer::new();
        ctx.log(b"PEXPIREAT", &[key, digits.format(at).as_bytes()]);
    }
}

pub(super) fn persist(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let key = args.get(1);
    let now = ctx.now;
    let (db, out) = ctx.db_out();
    match db.get(key, now) {
        Some(entry) if entry.expires_at != 0 => {
            db.set_expiry(key, 0, now);
            out.int(1);
            ctx.log(b"PERSIST", &[key]);
        }
        _ => out.int(0),
    }
}

/// TTL, PTTL, EXPIRETIME, PEXPIRETIME.
pub(super) fn ttl(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let name = args.get(0);
    let now = ctx.now;
    let (db, out) = ctx.db_out();
    let Some(entry) = db.get(args.get(1), now) else {
        return out.int(-2);
    };
    if entry.expires_at == 0 {
        return out.int(-1);
    }
    let at = entry.expires_at;
    let left = at.saturating_sub(now);
    let n = if is(name, "TTL") {
        (left + 500) / 1000
    } else if is(name, "PTTL") {
        left
    } else if is(name, "EXPIRETIME") {
        at / 1000
    } else {
        at
    };
    out.int(n as i64);
}

pub(super) fn type_of(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let now = ctx.now;
    let (db, out) = ctx.db_out();
    out.simple(if db.contains(args.get(1), now) {
        "string"
    } else {
        "none"
    });
}

pub(super) fn scan(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let Some(cursor) = std::str::from_utf8(args.get(1))
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return ctx.out.error("ERR invalid cursor");
    };
    let mut pattern: Option<&[u8]> = None;
    let mut count = 10usize;
    let mut strings_only = true;
    let mut i = 2;
    while i < args.len() {
        if i + 1 >= args.len() {
            return ctx.out.error(SYNTAX);
        }
        let (opt, val) = (args.get(i), args.get(i + 1));
        if is(opt, "MATCH") {
            pattern = Some(val);
        } else if is(opt, "COUNT") {
            match parse_int(val) {
                Some(n) if n >= 1 => count = n as usize,
                Some(_) => return ctx.out.error(SYNTAX),
                None => return ctx.out.error(NOT_AN_INTEGER),
            }
        } else if is(opt, "TYPE") {
            // Every key here is a string.
            strings_only = is(val, "string");
        } else {
            return ctx.out.error(SYNTAX);
        }
        i += 2;
    }
    let now = ctx.now;
    let (db, out) = ctx.db_out();
    let mut found: Vec<&[u8]> = Vec::new();
    let step = db.scan(cursor, count, now, |entry| {
        let key = entry.key();
        if strings_only && pattern.is_none_or(|p| glob::matches(p, key)) {
            found.push(key);
        }
    });
    out.array(2);
    let mut digits = itoa::Buffer::new();
    out.bulk(digits.format(step.cursor).as_bytes());
    out.array(found.len());
    for key in found {
        out.bulk(key);
    }
}

pub(super) fn keys(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let pattern = args.get(1);
    let now = ctx.now;
    let (db, out) = ctx.db_out();
    let keys: Vec<&[u8]> = db
        .iter()
        .filter(|e| !e.is_expired(now) && glob::matches(pattern, e.key()))
        .map(|e| e.key())
        .collect();
    out.array(keys.len());
    for key in keys {
        out.bulk(key);
    }
}

pub(super) fn dbsize(ctx: &mut Ctx<'_>, _args: Args<'_>) {
    let (db, out) = ctx.db_out();
    out.int(db.len() as i64);
}

/// FLUSHDB and FLUSHALL [ASYNC | SYNC]: only the caller's namespace.
pub(super) fn flushdb(ctx: &mut Ctx<'_>, args: Args<'_>) {
    match args.len() {
        1 => {}
        2 if is(args.get(1), "ASYNC") || is(args.get(1), "SYNC") => {}
        _ => return ctx.out.error(SYNTAX),
    }
    let (db, out) = ctx.db_out();
    db.flush();
    out.ok();
    ctx.log(b"FLUSHDB", &[]);
}
