//! MULTI / EXEC / DISCARD / WATCH / UNWATCH: optimistic transactions.
//!
//! A transaction runs atomically for free: the keyspace is locked for a whole batch
//! of requests. WATCH registers a shared flag with each key; any change to the key
//! (a write, a delete, FLUSHDB, or its expiry) sets the flag and EXEC answers nil.

use std::sync::atomic::Ordering;

use super::super::args::Args;
use super::super::client::Multi;
use super::ctx::Ctx;
use super::execute;

pub(super) fn multi(ctx: &mut Ctx<'_>, _args: Args<'_>) {
    if ctx.client.multi.is_some() {
        return ctx.out.error("ERR MULTI calls can not be nested");
    }
    ctx.client.multi = Some(Multi::default());
    ctx.out.ok();
}

pub(super) fn discard(ctx: &mut Ctx<'_>, _args: Args<'_>) {
    if ctx.client.multi.take().is_none() {
        return ctx.out.error("ERR DISCARD without MULTI");
    }
    ctx.client.unwatch_all(ctx.ks);
    ctx.out.ok();
}

pub(super) fn exec(ctx: &mut Ctx<'_>, _args: Args<'_>) {
    let Some(multi) = ctx.client.multi.take() else {
        return ctx.out.error("ERR EXEC without MULTI");
    };
    if multi.failed {
        ctx.client.unwatch_all(ctx.ks);
        return ctx
            .out
            .error("EXECABORT Transaction discarded because of previous errors.");
    }
    // A watched key whose time has passed but that nobody touched since is removed
    // now, which sets the flag: an expiry counts as a change.
    let now = ctx.now;
    for (db, key) in &ctx.client.watching {
        ctx.ks.dbs[*db].contains(key, now);
    }
    if ctx.client.watch_dirty.load(Ordering::Relaxed) {
        ctx.client.unwatch_all(ctx.ks);
        return ctx.out.null_array();
    }
    ctx.client.unwatch_all(ctx.ks);
    ctx.out.array(multi.queued.len());
    for queued in &multi.queued {
        execute(ctx, queued.args());
    }
}

pub(super) fn watch(ctx: &mut Ctx<'_>, args: Args<'_>) {
    if ctx.client.multi.is_some() {
        return ctx.out.error("ERR WATCH inside MULTI is not allowed");
    }
    let id = ctx.db_id();
    let now = ctx.now;
    for key in args.rest(1) {
        if ctx
            .client
            .watching
            .iter()
            .any(|(db, k)| *db == id && **k == *key)
        {
            continue;
        }
        let db = &mut ctx.ks.dbs[id];
        // Expire it first if due, so an old expiry does not count as a change.
        db.contains(key, now);
        db.watch(key, &ctx.client.watch_dirty);
        ctx.client.watching.push((id, key.into()));
    }
    ctx.out.ok();
}

pub(super) fn unwatch(ctx: &mut Ctx<'_>, _args: Args<'_>) {
    ctx.client.unwatch_all(ctx.ks);
    ctx.out.ok();
}
