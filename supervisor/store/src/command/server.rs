//! Server introspection: INFO, COMMAND, CONFIG, TIME, BGREWRITEAOF. Enough for
//! clients and tools that probe on connect (redis-cli asks COMMAND DOCS,
//! redis-benchmark asks CONFIG GET save/appendonly).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use appvisor_config::Persist;

use super::super::args::Args;
use super::super::glob;
use super::connection::REDIS_COMPAT_VERSION;
use super::ctx::{is, Ctx};
use super::{Spec, COMMANDS};

pub(super) fn info(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let all = args.len() == 1
        || args
            .rest(1)
            .any(|s| is(s, "all") || is(s, "everything") || is(s, "default"));
    let wants = |name: &str| all || args.rest(1).any(|s| is(s, name));
    let server = ctx.server;
    let mut text = String::new();
    if wants("server") {
        let _ = write!(
            text,
            "# Server\r\nredis_version:{REDIS_COMPAT_VERSION}\r\nappvisor_version:{}\r\nredis_mode:standalone\r\nos:{}\r\narch_bits:64\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::process::id(),
            server.tcp.map_or(0, |a| a.port()),
            server.started.elapsed().as_secs(),
        );
    }
    if wants("clients") {
        let _ = write!(
            text,
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\nunauthenticated_clients:{}\r\nmax_unauthenticated_clients:{}\r\n\r\n",
            server.clients.load(Ordering::Relaxed),
            server.seats.max_clients,
            server.seats.anonymous(),
            server.seats.max_anonymous,
        );
    }
    if wants("memory") {
        let used = ctx.ks.memory();
        let _ = write!(
            text,
            "# Memory\r\nused_memory:{used}\r\nused_memory_human:{:.2}M\r\nmem_clients_normal:{}\r\nmaxmemory:{}\r\nmaxmemory_policy:noeviction\r\n\r\n",
            used as f64 / (1024.0 * 1024.0),
            // As Redis's: client buffers both ways, replies and requests.
            server.output.load(Ordering::Relaxed) + server.input.load(Ordering::Relaxed),
            server.max_memory.unwrap_or(0),
        );
    }
    if wants("persistence") {
        let log = &server.log;
        let _ = write!(
            text,
            "# Persistence\r\nloading:0\r\naof_enabled:{}\r\naof_rewrite_in_progress:{}\r\naof_last_write_status:{}\r\naof_current_size:{}\r\naof_base_size:{}\r\n\r\n",
            u8::from(server.logging),
            u8::from(log.rewriting.load(Ordering::Relaxed)),
            if log.failed.load(Ordering::Relaxed) { "err" } else { "ok" },
            log.size.load(Ordering::Relaxed),
            log.base_size.load(Ordering::Relaxed),
        );
    }
    if wants("stats") {
        let _ = write!(
            text,
            "# Stats\r\ntotal_connections_received:{}\r\n\r\n",
            server
                .next_client_id
                .load(Ordering::Relaxed)
                .saturating_sub(1),
        );
    }
    if wants("keyspace") {
        text.push_str("# Keyspace\r\n");
        let (db, _) = ctx.db_out();
        if db.len() > 0 {
            let _ = write!(
                text,
                "db0:keys={},expires={},avg_ttl=0\r\n",
                db.len(),
                db.expiring()
            );
        }
        text.push_str("\r\n");
    }
    // Redis ends the text without the final blank line.
    while text.ends_with("\r\n\r\n") {
        text.truncate(text.len() - 2);
    }
    ctx.out.verbatim(&text);
}

fn command_entry(ctx: &mut Ctx<'_>, spec: &Spec) {
    let out = &mut ctx.out;
    out.array(10);
    out.bulk_str(spec.name);
    out.int(i64::from(spec.arity));
    let flags = spec.flag_names();
    out.set(flags.len());
    for flag in flags {
        out.simple(flag);
    }
    let (first, last, step) = spec.key_positions();
    out.int(i64::from(first));
    out.int(i64::from(last));
    out.int(i64::from(step));
    out.set(0); // ACL categories
    out.set(0); // tips
    out.array(0); // key specs
    out.array(0); // subcommands
}

pub(super) fn command(ctx: &mut Ctx<'_>, args: Args<'_>) {
    if args.len() == 1 {
        ctx.out.array(COMMANDS.len());
        for spec in COMMANDS {
            command_entry(ctx, spec);
        }
        return;
    }
    let sub = args.get(1);
    if is(sub, "COUNT") && args.len() == 2 {
        ctx.out.int(COMMANDS.len() as i64);
    } else if is(sub, "DOCS") {
        // No documentation to offer: redis-cli falls back to its built-in help.
        ctx.out.map(0);
    } else if is(sub, "INFO") {
        let names: Vec<&[u8]> = args.rest(2).collect();
        if names.is_empty() {
            ctx.out.array(COMMANDS.len());
            for spec in COMMANDS {
                command_entry(ctx, spec);
            }
            return;
        }
        ctx.out.array(names.len());
        for name in names {
            match super::lookup(name) {
                Some(spec) => command_entry(ctx, spec),
                None => ctx.out.null_array(),
            }
        }
    } else if is(sub, "LIST") {
        ctx.out.array(COMMANDS.len());
        for spec in COMMANDS {
            ctx.out.bulk_str(spec.name);
        }
    } else {
        ctx.out.error(&format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(sub)
        ));
    }
}

pub(super) fn config(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let sub = args.get(1);
    if is(sub, "GET") && args.len() >= 3 {
        let server = ctx.server;
        let persist = match server.persist {
            _ if !server.logging => "no",
            Persist::Always => "always",
            Persist::EverySec => "everysec",
            Persist::No => "no",
        };
        let params: [(&str, String); 8] = [
            ("save", String::new()),
            (
                "appendonly",
                if server.logging { "yes" } else { "no" }.to_owned(),
            ),
            ("appendfsync", persist.to_owned()),
            ("maxmemory", server.max_memory.unwrap_or(0).to_string()),
            ("maxmemory-policy", "noeviction".to_owned()),
            ("maxclients", server.seats.max_clients.to_string()),
            ("notify-keyspace-events", "xE".to_owned()),
            ("databases", "1".to_owned()),
        ];
        let hits: Vec<&(&str, String)> = params
            .iter()
            .filter(|(name, _)| {
                args.rest(2)
                    .any(|p| glob::matches(&p.to_ascii_lowercase(), name.as_bytes()))
            })
            .collect();
        ctx.out.map(hits.len());
        for (name, value) in hits {
            ctx.out.bulk_str(name);
            ctx.out.bulk_str(value);
        }
    } else if is(sub, "SET") && args.len() >= 4 && args.len().is_multiple_of(2) {
        // Keyspace expiry events are always on; session libraries that switch them
        // on get a yes. Nothing else is settable from a client.
        for pair in (2..args.len()).step_by(2) {
            if !is(args.get(pair), "notify-keyspace-events") {
                return ctx.out.error(&format!(
                    "ERR Unknown option or number of arguments for CONFIG SET - '{}'",
                    String::from_utf8_lossy(args.get(pair))
                ));
            }
        }
        ctx.out.ok();
    } else if is(sub, "RESETSTAT") && args.len() == 2 {
        ctx.out.ok();
    } else if is(sub, "GET") || is(sub, "SET") {
        ctx.out.error(&format!(
            "ERR wrong number of arguments for 'config|{}' command",
            String::from_utf8_lossy(sub).to_ascii_lowercase()
        ));
    } else {
        ctx.out.error(&format!(
            "ERR unknown subcommand '{}'. Try CONFIG HELP.",
            String::from_utf8_lossy(sub)
        ));
    }
}

pub(super) fn time(ctx: &mut Ctx<'_>, _args: Args<'_>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut digits = itoa::Buffer::new();
    ctx.out.array(2);
    ctx.out.bulk(digits.format(now.as_secs()).as_bytes());
    ctx.out.bulk(digits.format(now.subsec_micros()).as_bytes());
}

pub(super) fn bgrewriteaof(ctx: &mut Ctx<'_>, _args: Args<'_>) {
    if !ctx.server.logging {
        return ctx
            .out
            .error("ERR the store keeps no append-only log (persist = \"no\")");
    }
    if ctx.server.log.rewriting.load(Ordering::Relaxed) {
        return ctx
            .out
            .error("ERR Background append only file rewriting already in progress");
    }
    ctx.server
        .log
        .rewrite_requested
        .store(true, Ordering::Relaxed);
    ctx.ks.alarm.notify.notify_one();
    ctx.out
        .simple("Background append only file rewriting started");
}
