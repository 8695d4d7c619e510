//! Draws the [`Model`] into a ratatui frame: a header, the apps, the selected
//! app's workers, its memory chart with limit lines and recycle markers, its last
//! recycles, and the key line; the help and confirmation dialogs on top. Laid out
//! for 80×24 (an ssh session's default) and anything larger.

use ratatui::buffer::Buffer;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::canvas::{Canvas, Line as CanvasLine, Points};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Widget, Wrap};
use ratatui::Frame;

use super::model::{age, human_mib, Action, ChartData, Link, Mode, Model};

/// Worker colours, by slot.
const COLORS: [Color; 6] = [
    Color::Cyan,
    Color::Green,
    Color::Magenta,
    Color::Blue,
    Color::LightYellow,
    Color::LightRed,
];

pub const KEYS: &str = "q quit  ↑↓ app  ←→ range  r recycle  s start  x stop  ? help";

/// Apps listed at once; more scroll with the selection.
const APP_ROWS: usize = 4;
/// Workers listed at once.
const WORKER_ROWS: usize = 6;
/// Lines of the "last recycles" section.
const RECENT_ROWS: usize = 3;

pub fn draw(frame: &mut Frame, m: &Model) {
    let area = frame.area();
    let [header, body, message, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(u16::from(m.message.is_some())),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(header_line(m)), header);
    match (&m.link, &m.status) {
        (Link::Up, Some(status)) if !status.apps.is_empty() => main_view(frame, body, m),
        (Link::Up, _) => frame.render_widget(
            Paragraph::new(vec![
                Line::raw(""),
                Line::raw("The supervisor runs no apps."),
                Line::raw("Add an [[app]] to its config and run `appvisor reload`."),
            ])
            .alignment(Alignment::Center),
            body,
        ),
        (Link::Down(why), _) => frame.render_widget(
            Paragraph::new(vec![
                Line::raw(""),
                Line::styled("No supervisor answers.", Style::new().bold()),
                Line::raw(""),
                Line::raw(format!("Looked for it at {}", m.socket)),
                Line::raw(why.clone()),
                Line::raw(""),
                Line::raw("top tries again every second; q quits."),
            ])
            .alignment(Alignment::Center)
            .wrap(Wrap { trim: true }),
            body,
        ),
    }
    if let Some(msg) = &m.message {
        frame.render_widget(
            Paragraph::new(Line::styled(msg.clone(), Style::new().fg(Color::Yellow))),
            message,
        );
    }
    frame.render_widget(
        Paragraph::new(Line::styled(KEYS, Style::new().add_modifier(Modifier::DIM))),
        keys,
    );
    match &m.mode {
        Mode::Main => {}
        Mode::Help => help(frame, area),
        Mode::Confirm(action, app) => confirm(frame, area, *action, app),
    }
}

fn header_line(m: &Model) -> Line<'static> {
    let left = match (&m.link, &m.status) {
        (Link::Up, Some(s)) => format!(
            "appvisor top · pid {} · up {} · {} · config gen {}",
            s.pid,
            age(s.uptime_ms as f64 / 1000.0),
            s.rss.map(human_mib).unwrap_or_else(|| "-".into()),
            s.config_generation
        ),
        _ => "appvisor top · not connected".into(),
    };
    Line::from(vec![
        Span::styled(left, Style::new().bold()),
        Span::raw(format!(" · range {}", m.range_label())),
    ])
}

fn main_view(frame: &mut Frame, area: Rect, m: &Model) {
    let status = m.status.as_ref().expect("main view has a status");
    let app = m.selected_app();
    let workers = app.map(|a| a.workers.len()).unwrap_or(0);
    let [apps, workers_area, chart, recent] = Layout::vertical([
        Constraint::Length(status.apps.len().clamp(1, APP_ROWS) as u16),
        Constraint::Length(1 + workers.clamp(1, WORKER_ROWS) as u16),
        Constraint::Min(5),
        Constraint::Length(1 + RECENT_ROWS as u16),
    ])
    .areas(area);
    apps_list(frame.buffer_mut(), apps, m);
    let Some(app) = app else { return };
    workers_table(frame.buffer_mut(), workers_area, m, app);
    let data = m.chart();
    let title = match &data {
        Some(d) => {
            let mut t = format!(
                " memory of {} ({}, MiB) · last {} · from {} ",
                app.name,
                d.metric.name(),
                m.range_label(),
                d.source
            );
            if d.limits.is_empty() {
                t.push_str("· no limit set ");
            }
            t
        }
        None => format!(" memory of {} ", app.name),
    };
    let block = Block::new().borders(Borders::TOP).title(title);
    let inner = block.inner(chart);
    frame.render_widget(block, chart);
    match data {
        Some(d) if d.series.iter().any(|s| !s.points.is_empty()) => {
            frame.render_widget(MemoryChart(&d), inner)
        }
        _ => frame.render_widget(
            Paragraph::new("waiting for samples…").alignment(Alignment::Center),
            inner,
        ),
    }
    let block = Block::new().borders(Borders::TOP).title(" last recycles ");
    let inner = block.inner(recent);
    frame.render_widget(block, recent);
    let lines: Vec<Line> = match m.recent(&app.name, RECENT_ROWS) {
        l if l.is_empty() => vec![Line::raw("none recorded")],
        l => l.into_iter().map(Line::raw).collect(),
    };
    frame.render_widget(Paragraph::new(lines), inner);
}

fn apps_list(buf: &mut Buffer, area: Rect, m: &Model) {
    let Some(status) = &m.status else { return };
    let at = status
        .apps
        .iter()
        .position(|a| Some(&a.name) == m.selected.as_ref())
        .unwrap_or(0);
    let rows = area.height as usize;
    let first = at.saturating_sub(rows.saturating_sub(1));
    for (i, a) in status.apps.iter().enumerate().skip(first).take(rows) {
        let selected = i == at;
        let mut text = format!(
            "{} {:<14} {:<11} recycles {:<3} crashes {:<3}",
            if selected { "▶" } else { " " },
            a.name,
            a.state.as_str(),
            a.recycles,
            a.crashes
        );
        if let Some(next) = m.next_schedule(a) {
            text.push_str(&format!("  next {next}"));
        }
        let style = if selected {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            Style::new()
        };
        let row = Rect::new(area.x, area.y + (i - first) as u16, area.width, 1);
        Paragraph::new(Line::styled(text, style)).render(row, buf);
    }
}

fn workers_table(buf: &mut Buffer, area: Rect, m: &Model, app: &crate::pool::AppStatus) {
    let limits = m.limits(&app.name);
    let mem_name = match m.chart().map(|d| d.metric) {
        Some(super::model::Metric::Private) => "PRIVATE",
        _ => "RSS",
    };
    let mut lines = vec![Line::styled(
        format!(
            "  {:<2} {:<8} {:<5} {:<9} {:<13} {:<15} {:<8} STATUS",
            "W", "PID", "GEN", "STATE", "AGE/INTERVAL", "REQ/LIMIT", mem_name
        ),
        Style::new().bold(),
    )];
    if app.workers.is_empty() {
        lines.push(Line::raw("  no workers"));
    }
    for w in app.workers.iter().take(WORKER_ROWS) {
        let age_s = w.uptime_ms as f64 / 1000.0;
        let age_col = match limits.interval_s {
            Some(i) => format!("{}/{}", age(age_s), age(i)),
            None => age(age_s),
        };
        let req_col = match limits.requests {
            Some(r) => format!("{}/{}", w.requests, r),
            None => w.requests.to_string(),
        };
        let mem = if mem_name == "PRIVATE" {
            w.private
        } else {
            w.rss
        };
        let color = COLORS[w.worker as usize % COLORS.len()];
        lines.push(Line::from(vec![
            Span::styled(format!("  {:<2} ", w.worker), Style::new().fg(color)),
            Span::raw(format!(
                "{:<8} {:<5} {:<9} {:<13} {:<15} {:<8} {}",
                w.pid,
                w.generation,
                w.state.as_str(),
                age_col,
                req_col,
                mem.map(human_mib).unwrap_or_else(|| "-".into()),
                w.status.as_deref().unwrap_or("")
            )),
        ]));
    }
    Paragraph::new(lines).render(area, buf);
}

/// The memory chart: worker lines in braille, the limits as dashed rows, the
/// recycle markers as dotted columns topped by a letter (R recycle, C crash, F
/// startup failed, K killed, S stopped).
struct MemoryChart<'a>(&'a ChartData);

/// Columns of the y axis labels (and the axis itself).
const Y_LABELS: u16 = 7;

impl Widget for MemoryChart<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let d = self.0;
        if area.width <= Y_LABELS + 10 || area.height < 3 {
            return;
        }
        let plot = Rect::new(
            area.x + Y_LABELS,
            area.y,
            area.width - Y_LABELS,
            area.height - 1,
        );
        // The y axis: the top, the middle and zero.
        let dim = Style::new().add_modifier(Modifier::DIM);
        for row in 0..plot.height {
            buf.set_string(area.x + Y_LABELS - 1, plot.y + row, "│", dim);
        }
        let label = |v: f64| {
            if v >= 100.0 || v == 0.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        };
        // Rows as the canvas maps values (and the limit lines below).
        let row_of = |mib: f64| {
            let f = ((d.y_max_mib - mib) / d.y_max_mib).clamp(0.0, 1.0);
            plot.y + (f * f64::from(plot.height - 1)).round() as u16
        };
        let rows = [
            (row_of(d.y_max_mib), label(d.y_max_mib)),
            (row_of(d.y_max_mib / 2.0), label(d.y_max_mib / 2.0)),
            (row_of(0.0), "0".to_string()),
        ];
        for (y, text) in rows {
            buf.set_string(
                area.x,
                y,
                format!("{text:>w$}", w = (Y_LABELS - 1) as usize),
                dim,
            );
        }
        // The x axis: the range's start, its middle and now.
        let bottom = area.y + area.height - 1;
        buf.set_string(area.x + Y_LABELS - 1, bottom, "└", dim);
        buf.set_string(plot.x, bottom, format!("-{}", age(d.range_s)), dim);
        let mid = format!("-{}", age(d.range_s / 2.0));
        buf.set_string(
            plot.x + plot.width / 2 - (mid.chars().count() as u16) / 2,
            bottom,
            mid,
            dim,
        );
        buf.set_string(plot.x + plot.width - 3, bottom, "now", dim);

        Canvas::default()
            .marker(Marker::Braille)
            .x_bounds([-d.range_s, 0.0])
            .y_bounds([0.0, d.y_max_mib])
            .paint(|ctx| {
                for s in &d.series {
                    let color = COLORS[s.worker as usize % COLORS.len()];
                    if s.points.len() == 1 {
                        ctx.draw(&Points {
                            coords: &s.points,
                            color,
                        });
                    }
                    for w in s.points.windows(2) {
                        ctx.draw(&CanvasLine::new(w[0].0, w[0].1, w[1].0, w[1].1, color));
                    }
                }
            })
            .render(plot, buf);

        let col_of = |x: f64| {
            let f = ((x + d.range_s) / d.range_s).clamp(0.0, 1.0);
            plot.x + (f * f64::from(plot.width - 1)).round() as u16
        };
        let empty = |buf: &Buffer, x: u16, y: u16| buf[(x, y)].symbol() == " ";
        for (x, glyph) in &d.marks {
            let col = col_of(*x);
            for y in plot.y + 1..plot.y + plot.height {
                if empty(buf, col, y) {
                    buf[(col, y)].set_symbol("┆").set_fg(Color::Yellow);
                }
            }
            buf[(col, plot.y)]
                .set_char(*glyph)
                .set_fg(Color::Yellow)
                .set_style(Style::new().bold());
        }
        for l in &d.limits {
            let y = row_of(l.mib);
            let style = Style::new().fg(Color::Red);
            for x in plot.x..plot.x + plot.width {
                if empty(buf, x, y) || buf[(x, y)].symbol() == "┆" {
                    buf[(x, y)].set_symbol("╌").set_style(style);
                }
            }
            let text = format!(" {} {} ", l.name, human_mib((l.mib * 1_048_576.0) as u64));
            let w = text.chars().count() as u16;
            if w < plot.width {
                buf.set_string(plot.x + plot.width - w - 1, y, text, style.bold());
            }
        }
    }
}

/// A centered box of `w`×`h` cells (smaller when the screen is).
fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

fn confirm(frame: &mut Frame, area: Rect, action: Action, app: &str) {
    let what = match action {
        Action::Recycle => "Workers are replaced one at a time; no request is dropped.",
        Action::Start => "Its workers are started.",
        Action::Stop => "Its workers drain and exit; its sockets stay open.",
    };
    let verb = action.verb();
    let mut title = verb.to_string();
    title[..1].make_ascii_uppercase();
    let text = vec![
        Line::styled(format!("{title} {app}?"), Style::new().bold()),
        Line::raw(what),
        Line::raw(""),
        Line::raw("y: yes    n: no"),
    ];
    let rect = centered(area, 64, 6);
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(text)
            .alignment(Alignment::Center)
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title(format!(" {verb} "))),
        rect,
    );
}

fn help(frame: &mut Frame, area: Rect) {
    let rows = [
        ("↑ ↓  k j  Tab", "select the app"),
        ("← →  - +", "chart range (5m 15m 1h 6h 24h 7d)"),
        ("r", "recycle the selected app (asks y/n)"),
        ("s", "start it (asks y/n)"),
        ("x", "stop it (asks y/n)"),
        ("? h", "this help; any key closes it"),
        ("q  Esc  Ctrl-C", "quit"),
    ];
    let mut text: Vec<Line> = rows
        .iter()
        .map(|(k, what)| Line::raw(format!(" {k:<15} {what}")))
        .collect();
    text.push(Line::raw(""));
    text.push(Line::raw(
        " Chart: one line per worker generation; ╌ a limit;",
    ));
    text.push(Line::raw(
        " R recycle, C crash, F startup failed, K killed, S stop.",
    ));
    let rect = centered(area, 62, text.len() as u16 + 2);
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(text).block(Block::bordered().title(" appvisor top: keys ")),
        rect,
    );
}
