//! SUBSCRIBE, PSUBSCRIBE, UNSUBSCRIBE, PUNSUBSCRIBE, PUBLISH — within the caller's
//! namespace, so one app never hears another's keys expire.

use super::super::args::Args;
use super::ctx::Ctx;

/// `kind channel count` confirmation, a push frame in RESP3.
fn confirm(ctx: &mut Ctx<'_>, kind: &str, channel: Option<&[u8]>) {
    let count = ctx.client.subscriptions() as i64;
    ctx.out.push(3);
    ctx.out.bulk_str(kind);
    match channel {
        Some(c) => ctx.out.bulk(c),
        None => ctx.out.null(),
    }
    ctx.out.int(count);
}

/// Subscriptions stay in the namespace of the first one.
fn subscription_db(ctx: &mut Ctx<'_>) -> usize {
    if ctx.client.subscriptions() == 0 {
        ctx.client.sub_db = ctx.db_id();
    }
    ctx.client.sub_db
}

pub(super) fn subscribe(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let db = subscription_db(ctx);
    let sub = ctx.client.subscriber();
    for channel in args.rest(1) {
        if ctx.client.channels.insert(channel.into()) {
            ctx.ks.dbs[db].pubsub.subscribe(channel, &sub);
        }
        confirm(ctx, "subscribe", Some(channel));
    }
}

pub(super) fn psubscribe(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let db = subscription_db(ctx);
    let sub = ctx.client.subscriber();
    for pattern in args.rest(1) {
        if ctx.client.patterns.insert(pattern.into()) {
            ctx.ks.dbs[db].pubsub.psubscribe(pattern, &sub);
        }
        confirm(ctx, "psubscribe", Some(pattern));
    }
}

pub(super) fn unsubscribe(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let db = ctx.client.sub_db;
    let channels: Vec<Box<[u8]>> = if args.len() > 1 {
        args.rest(1).map(Into::into).collect()
    } else {
        ctx.client.channels.iter().cloned().collect()
    };
    if channels.is_empty() {
        return confirm(ctx, "unsubscribe", None);
    }
    for channel in channels {
        if ctx.client.channels.remove(&channel) {
            ctx.ks.dbs[db].pubsub.unsubscribe(&channel, ctx.client.id);
        }
        confirm(ctx, "unsubscribe", Some(&channel));
    }
}

pub(super) fn punsubscribe(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let db = ctx.client.sub_db;
    let patterns: Vec<Box<[u8]>> = if args.len() > 1 {
        args.rest(1).map(Into::into).collect()
    } else {
        ctx.client.patterns.iter().cloned().collect()
    };
    if patterns.is_empty() {
        return confirm(ctx, "punsubscribe", None);
    }
    for pattern in patterns {
        if ctx.client.patterns.remove(&pattern) {
            ctx.ks.dbs[db].pubsub.punsubscribe(&pattern, ctx.client.id);
        }
        confirm(ctx, "punsubscribe", Some(&pattern));
    }
}

pub(super) fn publish(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let (db, out) = ctx.db_out();
    let n = db.pubsub.publish(args.get(1), args.get(2));
    out.int(n as i64);
}
