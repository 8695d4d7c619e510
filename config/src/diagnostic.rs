//! Errors a user sees: each names the file, the line:column, the app and field, the
//! bad value and what to write instead.
//!
//! Serde stops at the first type error, so those arrive one at a time; everything the
//! resolver checks afterwards is collected and reported together.
//!
//! Two renderings, on purpose. [`ConfigError`]'s `Display` is one line per problem
//! (`file:line:col: field: message`): it goes into `events.jsonl`
//! (`config_rejected`), the reload reply and anything that greps it.
//! [`ConfigError::annotated`] adds, under each line, the offending source line
//! with a caret under the spot (drawn by `annotate-snippets`); the CLI prints that
//! one, for a person at a terminal.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{}: cannot read the config file: {source}; check the path and its permissions", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid appvisor config. Every problem found is
    /// listed, one per line.
    #[error("{}", ProblemList(problems))]
    Invalid { problems: Vec<Problem> },
}

impl ConfigError {
    /// The individual problems (empty for [`ConfigError::Read`]).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems } => problems,
        }
    }

    /// The same text as `Display`, each problem followed by its source line with a
    /// caret under the offending spot:
    ///
    /// ```text
    /// appvisor.toml:4:13: app "web" field processes: found string "two", expected a non-negative integer
    ///   |
    /// 4 | processes = "two"
    ///   |             ^^^^^
    /// ```
    ///
    /// A problem without a place (a missing file, a missing key reported at no
    /// span) is its one line, as in `Display`.
    pub fn annotated(&self) -> Annotated<'_> {
        Annotated(self)
    }
}

/// [`ConfigError`] with source excerpts; see [`ConfigError::annotated`].
#[derive(Debug)]
pub struct Annotated<'a>(&'a ConfigError);

impl fmt::Display for Annotated<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ConfigError::Invalid { problems } = self.0 else {
            return write!(f, "{}", self.0);
        };
        // Plain: the text goes to logs and pipes as often as to a terminal.
        let renderer = Renderer::plain();
        for (i, p) in problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
            if let Some(excerpt) = &p.excerpt {
                let report = [Group::with_level(Level::ERROR).element(
                    Snippet::source(excerpt.text.as_str())
                        .line_start(excerpt.line)
                        .annotation(AnnotationKind::Primary.span(excerpt.span.clone())),
                )];
                write!(f, "\n{}", renderer.render(&report))?;
            }
        }
        Ok(())
    }
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The config file, as the user named it.
    pub file: PathBuf,
    /// Where in the file, when the problem has a place (a missing key is reported at
    /// its table).
    pub location: Option<Location>,
    /// `app "web" field recycle.startup_timeout`, `field store.url`, or `None` for a
    /// TOML syntax error.
    pub field: Option<String>,
    /// What is wrong and what to write instead.
    pub message: String,
    /// The source line at `location`, for [`ConfigError::annotated`].
    pub excerpt: Option<Excerpt>,
}

impl Problem {
    /// A problem in `text` (the file's contents) at byte range `span`, if it has one.
    pub(crate) fn new(
        file: &Path,
        text: &str,
        span: Option<Range<usize>>,
        field: Option<String>,
        message: String,
    ) -> Problem {
        Problem {
            file: file.to_owned(),
            location: span.as_ref().map(|s| Location::of(text, s.start)),
            field,
            message,
            excerpt: span.map(|s| Excerpt::of(text, s)),
        }
    }
}

/// The one source line a problem points at, and where on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excerpt {
    /// 1-based line number (the same as the problem's [`Location::line`]).
    pub line: usize,
    /// The whole line, without its line break.
    pub text: String,
    /// Byte range within `text` to underline: the problem's span, cut at the end of
    /// the line when it runs on (a table, a multi-line array). Empty at the very
    /// end of the file; the caret then sits just past the last character.
    pub span: Range<usize>,
}

impl Excerpt {
    /// The line of `text` where byte range `span` starts.
    pub fn of(text: &str, span: Range<usize>) -> Excerpt {
        let start = floor_char_boundary(text, span.start.min(text.len()));
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        // A CRLF file: the '\r' is not part of what the user sees on the line.
        let line_text = text[line_start..line_end]
            .strip_suffix('\r')
            .unwrap_or(&text[line_start..line_end]);
        let from = start - line_start;
        let to = floor_char_boundary(text, span.end.clamp(start, line_end)) - line_start;
        Excerpt {
            line: text[..line_start].matches('\n').count() + 1,
            text: line_text.to_owned(),
            span: from.min(line_text.len())..to.min(line_text.len()),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(loc) = self.location {
            write!(f, ":{}:{}", loc.line, loc.column)?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// 1-based line and column (column counted in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// The line:column of byte offset `at` in `text`.
    pub fn of(text: &str, at: usize) -> Location {
        let at = floor_char_boundary(text, at.min(text.len()));
        let before = &text[..at];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Location { line, column }
    }
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Who a problem belongs to: the whole file or one app (by name when it has one).
pub(crate) fn field_label(app: Option<&str>, path: &str) -> String {
    match app {
        Some(app) => format!("app {app} field {path}"),
        None => format!("field {path}"),
    }
}

/// Name an app in a message: `"web"`, or `#2` when it has no usable name.
pub(crate) fn app_label(name: Option<&str>, index: usize) -> String {
    match name {
        Some(n) if !n.is_empty() => format!("{n:?}"),
        _ => format!("#{}", index + 1),
    }
}

/// Turn a TOML parse or serde error into a [`Problem`]: find which field the error's
/// span falls in, and rewrite serde's Rust-flavoured wording into what to write.
pub(crate) fn from_toml_error(file: &Path, text: &str, err: &toml::de::Error) -> Problem {
    let span = err.span();
    let placed = span
        .as_ref()
        .and_then(|s| DeTable::parse(text).ok().map(|doc| locate(&doc, s)));
    let (field, last_key) = match placed {
        Some(Some(p)) => {
            // Every key under `env` is a variable name: hint about env, not the name.
            let in_env = p.label.contains(" env.") || p.label.starts_with("field env.");
            let key = if in_env {
                Some("env".to_owned())
            } else {
                p.last_key
            };
            (Some(p.label), key)
        }
        _ => (None, None),
    };
    let message = if field.is_none() && !is_serde_message(err.message()) {
        format!("TOML syntax error: {}", err.message())
    } else {
        rewrite_serde_message(err.message(), last_key.as_deref())
    };
    Problem::new(file, text, span, field, message)
}

fn is_serde_message(m: &str) -> bool {
    m.starts_with("unknown field")
        || m.starts_with("missing field")
        || m.starts_with("invalid type")
        || m.starts_with("invalid value")
        || m.starts_with("invalid length")
}

struct Placed {
    label: String,
    last_key: Option<String>,
}

/// Find the most specific key or value whose span contains `span`. The whole tree is
/// searched: a `[app.recycle]` header table's span covers only its header line, so
/// spans of children do not nest inside their parents'.
fn locate(doc: &Spanned<DeTable<'_>>, span: &Range<usize>) -> Option<Placed> {
    struct Best {
        len: usize,
        path: Vec<String>,
        app: Option<String>,
    }
    fn walk(
        table: &DeTable<'_>,
        span: &Range<usize>,
        path: &mut Vec<String>,
        app: &Option<String>,
        best: &mut Option<Best>,
    ) {
        for (key, value) in table.iter() {
            path.push(key.get_ref().to_string());
            for candidate in [key.span(), value.span()] {
                consider(&candidate, span, path, app, best);
            }
            walk_value(value, span, path, app, best);
            path.pop();
        }
    }
    fn walk_value(
        value: &Spanned<DeValue<'_>>,
        span: &Range<usize>,
        path: &mut Vec<String>,
        app: &Option<String>,
        best: &mut Option<Best>,
    ) {
        match value.get_ref() {
            DeValue::Table(t) => walk(t, span, path, app, best),
            DeValue::Array(items) => {
                let is_apps = path.len() == 1 && path[0] == "app";
                for (i, item) in items.iter().enumerate() {
                    if is_apps {
                        let name = item
                            .get_ref()
                            .as_table()
                            .and_then(|t| t.get("name"))
                            .and_then(|n| n.get_ref().as_str());
                        let app = Some(app_label(name, i));
                        let mut inner = Vec::new();
                        consider(&item.span(), span, &inner, &app, best);
                        walk_value(item, span, &mut inner, &app, best);
                    } else {
                        let last = path.pop().unwrap_or_default();
                        path.push(format!("{last}[{i}]"));
                        consider(&item.span(), span, path, app, best);
                        walk_value(item, span, path, app, best);
                        path.pop();
                        path.push(last);
                    }
                }
            }
            _ => {}
        }
    }
    fn consider(
        candidate: &Range<usize>,
        span: &Range<usize>,
        path: &[String],
        app: &Option<String>,
        best: &mut Option<Best>,
    ) {
        let len = candidate.end - candidate.start;
        if contains(candidate, span) && best.as_ref().is_none_or(|b| len <= b.len) {
            *best = Some(Best {
                len,
                path: path.to_vec(),
                app: app.clone(),
            });
        }
    }

    let mut best = None;
    walk(doc.get_ref(), span, &mut Vec::new(), &None, &mut best);
    let Best { path, app, .. } = best?;
    let last_key = path
        .last()
        .map(|k| k.split('[').next().unwrap_or(k).to_owned());
    let label = match (path.is_empty(), app) {
        (true, Some(app)) => format!("app {app}"),
        (true, None) => return None,
        (false, app) => field_label(app.as_deref(), &path.join(".")),
    };
    Some(Placed { label, last_key })
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && outer.start < outer.end
}

/// serde says `unknown field `x`, expected one of `a`, `b``, `invalid type: string
/// "2", expected i64`. Say it in the user's terms, with a suggestion.
fn rewrite_serde_message(m: &str, key: Option<&str>) -> String {
    if let Some(rest) = m.strip_prefix("unknown field `") {
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let known = backticked(expected);
        return unknown_key_message(name, &known);
    }
    if let Some(rest) = m.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        return format!("required key \"{name}\" is missing; add {name} = …");
    }
    let mut out = m
        .replace("expected i64", "expected an integer")
        .replace("expected u64", "expected a non-negative integer")
        .replace("expected u32", "expected a non-negative integer")
        .replace("expected a sequence", "expected an array")
        .replace("expected a map", "expected a table")
        .replace("invalid type: map", "invalid type: table")
        .replace("invalid type: sequence", "invalid type: array")
        .replace("invalid type: ", "found ")
        .replace("invalid value: ", "found ");
    match key {
        Some("app") if m.contains("map") => out.push_str(
            "; each app is an array-of-tables entry: write [[app]] (double brackets), not [app]",
        ),
        Some("env") if m.contains("expected a string") => {
            out.push_str("; environment values are strings: quote the value, e.g. PORT = \"8080\"")
        }
        _ if m.contains("expected a string") && m.contains("integer") => {
            out.push_str("; quote the value")
        }
        _ => {}
    }
    out
}

fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// `unknown key "startup_timout"; did you mean "startup_timeout"?`
pub(crate) fn unknown_key_message(name: &str, known: &[&str]) -> String {
    match closest(name, known) {
        Some(best) => format!("unknown key \"{name}\"; did you mean \"{best}\"?"),
        None if known.is_empty() => format!("unknown key \"{name}\"; this table takes no keys"),
        None => format!(
            "unknown key \"{name}\"; expected one of: {}",
            known.join(", ")
        ),
    }
}

/// The known word nearest to `word`, if it is near enough to be a typo.
pub(crate) fn closest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).clamp(1, 3);
    known
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Optimal-string-alignment distance: insertions, deletions, substitutions and
/// adjacent swaps (the usual typo set) each cost one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_counts_lines_and_chars_from_one() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(Location::of(text, 0), Location { line: 1, column: 1 });
        assert_eq!(Location::of(text, 6), Location { line: 2, column: 1 });
        // 'é' is two bytes but one column.
        assert_eq!(Location::of(text, 9), Location { line: 2, column: 3 });
    }

    #[test]
    fn an_excerpt_is_the_one_line_where_the_span_starts() {
        let text = "a = 1\r\nbé = [\n  2,\n]\n";
        // "[" starts on line 2 and the array runs on: underline to the line's end.
        let at = text.find('[').unwrap();
        let e = Excerpt::of(text, at..text.len() - 1);
        assert_eq!(e.line, 2);
        assert_eq!(e.text, "bé = [");
        assert_eq!(&e.text[e.span.clone()], "[");
        // The '\r' of a CRLF line is not shown, nor underlined.
        let e = Excerpt::of(text, 4..7);
        assert_eq!((e.line, e.text.as_str(), e.span), (1, "a = 1", 4..5));
        // The end of the file: an empty line, an empty span.
        let e = Excerpt::of(text, text.len()..text.len());
        assert_eq!((e.line, e.text.as_str(), e.span), (5, "", 0..0));
    }

    #[test]
    fn typos_get_a_suggestion_and_strangers_do_not() {
        let known = ["startup_timeout", "shutdown_timeout", "overlapped"];
        assert_eq!(closest("startup_timout", &known), Some("startup_timeout"));
        assert_eq!(closest("overlaped", &known), Some("overlapped"));
        assert_eq!(closest("colour", &known), None);
    }
}
