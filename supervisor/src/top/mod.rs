//! `appvisor top`: a live terminal UI over the control socket (ratatui + crossterm).
//!
//! Layout: [`model`] (what is known and shown; keys in, commands out; no terminal),
//! [`render`] (draws a model into a frame; snapshot-tested with `TestBackend`),
//! [`source`] (the control socket and the events file), and the loop below.
//!
//! Theory of operation: every refresh asks `status` (one small request on a kept
//! connection) and, for the selected app, `history` — only when the chart would gain
//! a column (range ÷ 160 points) or the app or range changed, so the supervisor
//! downsamples a handful of times a minute at most. A supervisor that does not know
//! `history` gets charted from this client's own ring of status polls. Lifecycle
//! events arrive on a `follow` connection; actions run on threads of their own so a
//! waiting recycle never freezes the screen. ratatui redraws only the cells that
//! changed, so nothing flickers and an idle screen sends nothing over ssh.

pub mod model;
pub mod render;
pub mod source;

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use ratatui::crossterm::event::{self, Event as TermEvent};

use model::{limits_from_config, Command, Model};
use source::{HistoryAnswer, Source};

/// Points per worker generation asked of `history`: about two per chart column
/// (braille) on a wide terminal.
pub const MAX_POINTS: usize = 160;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Runs the terminal UI until the user quits. stdout must be a terminal.
pub fn run(config: &Path, state_dir: &Path, interval_ms: u64) -> anyhow::Result<i32> {
    let socket = state_dir.join("control.sock");
    let mut model = Model::new(socket.display().to_string(), jiff::tz::TimeZone::system());
    for e in source::events_tail(&state_dir.join("events.jsonl")) {
        model.on_event(e);
    }
    let source = Source::new(socket, config.to_path_buf());
    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    let result = run_loop(&mut terminal, model, source, config, interval_ms);
    ratatui::restore();
    result
}

fn run_loop(
    terminal: &mut ratatui::DefaultTerminal,
    mut model: Model,
    mut source: Source,
    config: &Path,
    interval_ms: u64,
) -> anyhow::Result<i32> {
    let interval = Duration::from_millis(interval_ms.max(100));
    let (done_tx, done_rx) = mpsc::channel::<String>();
    let mut follow: Option<mpsc::Receiver<crate::events::Event>> = None;
    let mut config_generation = None;
    let mut next_poll = Instant::now();
    let mut next_history = Instant::now();
    let mut dirty = true;
    loop {
        let now = Instant::now();
        if now >= next_poll {
            next_poll = now + interval;
            dirty = true;
            match source.status() {
                Ok(status) => {
                    // The config's limits, read again when the supervisor reloads it.
                    if config_generation != Some(status.config_generation) {
                        config_generation = Some(status.config_generation);
                        if let Ok(c) = appvisor_config::load(config) {
                            model.config_limits = limits_from_config(&c);
                        }
                    }
                    model.on_status(unix_now(), status);
                    if follow.is_none() {
                        follow = Some(source.follow());
                    }
                }
                Err(why) => {
                    model.on_down(unix_now(), why);
                    follow = None;
                }
            }
            if now >= next_history && source.has_history() {
                if let Some(app) = model.selected.clone() {
                    let range = model.range_s();
                    match source.history(&app, range, MAX_POINTS) {
                        HistoryAnswer::Reply(h) => model.on_history(h),
                        HistoryAnswer::Unsupported | HistoryAnswer::Failed(_) => {}
                    }
                    let every = Duration::from_secs_f64(range as f64 / MAX_POINTS as f64);
                    next_history = now + every.max(interval);
                }
            }
        }
        if let Some(rx) = &follow {
            loop {
                match rx.try_recv() {
                    Ok(e) => {
                        model.on_event(e);
                        dirty = true;
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        follow = None;
                        break;
                    }
                }
            }
        }
        while let Ok(outcome) = done_rx.try_recv() {
            model.message = Some(outcome);
            next_poll = Instant::now();
            dirty = true;
        }
        if dirty {
            terminal.draw(|f| render::draw(f, &model))?;
            dirty = false;
        }
        let wait = next_poll
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(250));
        if !event::poll(wait)? {
            continue;
        }
        match event::read()? {
            TermEvent::Key(key) => {
                let before = (model.selected.clone(), model.range);
                match model.on_key(key) {
                    Some(Command::Quit) => return Ok(0),
                    Some(Command::Act(action, app)) => source.act(action, app, done_tx.clone()),
                    None => {}
                }
                if before != (model.selected.clone(), model.range) {
                    // Another app or range: its history now.
                    next_history = Instant::now();
                    next_poll = Instant::now();
                }
                dirty = true;
            }
            TermEvent::Resize(..) => dirty = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
