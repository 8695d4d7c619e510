//! From `[app.watch]` globs to *what to watch* (the fewest directories that can hold a
//! match) and *what counts* (which paths are watched, soft, or ignored).
//!
//! Every path here is relative to the app's cwd: the config rejects absolute globs and
//! `..`, and events arrive as `cwd/…`, so one `strip_prefix` puts both on the same
//! footing and no glob needs the cwd escaped into it.
//!
//! Choosing directories, per glob (its *literal prefix* is the leading components
//! without glob syntax):
//!
//! | glob | watched directories |
//! |---|---|
//! | `web.config`, `*.config`, `global.*` | the parent, non-recursively |
//! | `config/*.toml` | `config`, and its parent (so `config` itself appearing, vanishing or being renamed is seen), non-recursively |
//! | `bin/**`, `App_Code/**/*.cs`, `src/*/mod.rs` | `bin` (etc.) recursively, and its parent non-recursively |
//!
//! "Recursively" means one inotify watch per directory of the tree, installed by the
//! watcher itself, skipping ignored directories (`node_modules`, `.git`).
//!
//! A single file is never watched by itself: inotify watches inodes, and an editor's
//! atomic save (write a temporary file, rename it over) replaces the inode, which would
//! silently end such a watch. Watching the parent directory sees every save.

use std::path::{Path, PathBuf};

use appvisor_config::WatchConfig;
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use super::WatchError;

/// One directory to watch, relative to the cwd (`""` is the cwd itself).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PlanDir {
    pub rel: PathBuf,
    pub recursive: bool,
}

/// The compiled globs of one app and the directories they need.
#[derive(Debug)]
pub(crate) struct Matcher {
    pub cwd: PathBuf,
    /// `paths` ∪ `soft`, plus `X` for every `X/**` (so the directory `bin` itself
    /// being deleted or renamed counts, not only the files in it).
    watched: GlobSet,
    soft: GlobSet,
    /// Ignore globs without a `/`: matched against every component of a path, as
    /// `.gitignore` does (`*.swp` ignores a swap file at any depth).
    ignore_names: GlobSet,
    /// Ignore globs with a `/`: matched against the path and each of its ancestors, so
    /// `build/**` (and `build`) ignores everything below `build`.
    ignore_paths: GlobSet,
    /// Deduplicated: no directory appears twice, none lies under a recursive one.
    pub dirs: Vec<PlanDir>,
}

impl Matcher {
    pub fn new(app: &str, cwd: &Path, cfg: &WatchConfig) -> Result<Matcher, WatchError> {
        let mut watched = GlobSetBuilder::new();
        let mut soft = GlobSetBuilder::new();
        let mut dirs = Vec::new();
        for (field, list) in [("paths", &cfg.paths), ("soft", &cfg.soft)] {
            for text in list.iter() {
                let norm = normalize(text);
                let (literal, rest) = literal_prefix(&norm);
                let glob = compile(app, field, text, &norm)?;
                if field == "soft" {
                    soft.add(glob.clone());
                }
                watched.add(glob);
                let recursive_root = |dir: PathBuf, dirs: &mut Vec<PlanDir>| {
                    if let Some(parent) = dir.parent() {
                        dirs.push(PlanDir {
                            rel: parent.to_path_buf(),
                            recursive: false,
                        });
                    }
                    dirs.push(PlanDir {
                        rel: dir,
                        recursive: true,
                    });
                };
                match rest {
                    None if cwd.join(&literal).is_dir() => {
                        // `paths = ["bin"]` names a directory: watch what is in it.
                        let all = format!("{norm}/**");
                        watched.add(compile(app, field, text, &all)?);
                        if field == "soft" {
                            soft.add(compile(app, field, text, &all)?);
                        }
                        recursive_root(literal, &mut dirs);
                    }
                    None => dirs.push(PlanDir {
                        rel: literal.parent().map(Path::to_path_buf).unwrap_or_default(),
                        recursive: false,
                    }),
                    Some(rest) if rest.contains("**") || rest.contains('/') => {
                        recursive_root(literal, &mut dirs)
                    }
                    Some(_) => {
                        if let Some(parent) = literal.parent() {
                            dirs.push(PlanDir {
                                rel: parent.to_path_buf(),
                                recursive: false,
                            });
                        }
                        dirs.push(PlanDir {
                            rel: literal,
                            recursive: false,
                        });
                    }
                }
                if let Some(dir) = norm.strip_suffix("/**") {
                    let root = compile(app, field, text, dir)?;
                    if field == "soft" {
                        soft.add(root.clone());
                    }
                    watched.add(root);
                }
            }
        }
        let mut ignore_names = GlobSetBuilder::new();
        let mut ignore_paths = GlobSetBuilder::new();
        for text in &cfg.ignore {
            let norm = normalize(text.trim_end_matches('/'));
            if norm.is_empty() {
                continue;
            }
            if norm.contains('/') {
                ignore_paths.add(compile(app, "ignore", text, &norm)?);
                if let Some(dir) = norm.strip_suffix("/**") {
                    ignore_paths.add(compile(app, "ignore", text, dir)?);
                }
            } else {
                ignore_names.add(compile(app, "ignore", text, &norm)?);
            }
        }
        let build = |b: GlobSetBuilder, field: &'static str| {
            b.build().map_err(|source| WatchError::Glob {
                app: app.to_owned(),
                field,
                glob: String::new(),
                source,
            })
        };
        Ok(Matcher {
            cwd: cwd.to_path_buf(),
            watched: build(watched, "paths")?,
            soft: build(soft, "soft")?,
            ignore_names: build(ignore_names, "ignore")?,
            ignore_paths: build(ignore_paths, "ignore")?,
            dirs: dedup(dirs),
        })
    }

    /// Excluded by an `ignore` glob (the path itself or one of its ancestors).
    pub fn is_ignored(&self, rel: &Path) -> bool {
        if !self.ignore_names.is_empty()
            && rel
                .components()
                .any(|c| self.ignore_names.is_match(Path::new(c.as_os_str())))
        {
            return true;
        }
        !self.ignore_paths.is_empty() && rel.ancestors().any(|a| self.ignore_paths.is_match(a))
    }

    /// During a walk the ancestors were checked on the way down: only the entry's own
    /// name and path remain.
    pub fn is_ignored_entry(&self, rel: &Path, name: &Path) -> bool {
        self.ignore_names.is_match(name) || self.ignore_paths.is_match(rel)
    }

    /// Matched by `paths` or `soft`.
    pub fn is_glob_match(&self, rel: &Path) -> bool {
        self.watched.is_match(rel)
    }

    /// Changes to this path count (matched and not ignored).
    pub fn is_watched(&self, rel: &Path) -> bool {
        self.watched.is_match(rel) && !self.is_ignored(rel)
    }

    /// Changes to this path send the soft signal instead of recycling.
    pub fn is_soft(&self, rel: &Path) -> bool {
        self.soft.is_match(rel)
    }

    /// Whether an event on `rel` can matter: it matches a glob, or it is a structural
    /// event (created, removed, renamed) on a directory that is, contains or lies in a
    /// watched directory. Runs on notify's thread for every event, so it is cheap.
    pub fn is_relevant(&self, rel: &Path, structural: bool) -> bool {
        if self.watched.is_match(rel) {
            return !self.is_ignored(rel);
        }
        structural
            && self
                .dirs
                .iter()
                .any(|d| d.rel.starts_with(rel) || (d.recursive && rel.starts_with(&d.rel)))
            && !self.is_ignored(rel)
    }

    /// Whether `rel` lies in (or is) a recursively watched directory.
    pub fn in_recursive(&self, rel: &Path) -> bool {
        self.dirs
            .iter()
            .any(|d| d.recursive && rel.starts_with(&d.rel))
    }

    /// Whether `rel` is a planned directory or an ancestor of one: such a path being
    /// created, removed or renamed changes which inotify watches must exist.
    pub fn touches_plan(&self, rel: &Path) -> bool {
        self.dirs.iter().any(|d| d.rel.starts_with(rel))
    }
}

/// Drops empty and `.` components: `./bin//**` is `bin/**`.
fn normalize(glob: &str) -> String {
    glob.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Splits a normalized glob into its leading literal directory components and the rest
/// (`None` when the whole glob is literal).
fn literal_prefix(norm: &str) -> (PathBuf, Option<String>) {
    let comps: Vec<&str> = norm.split('/').filter(|c| !c.is_empty()).collect();
    let n = comps
        .iter()
        .position(|c| c.contains(['*', '?', '[', ']', '{', '}', '\\']))
        .unwrap_or(comps.len());
    let literal: PathBuf = comps[..n].iter().collect();
    let rest = (n < comps.len()).then(|| comps[n..].join("/"));
    (literal, rest)
}

fn compile(app: &str, field: &'static str, text: &str, glob: &str) -> Result<Glob, WatchError> {
    GlobBuilder::new(glob)
        .literal_separator(true)
        .build()
        .map_err(|source| WatchError::Glob {
            app: app.to_owned(),
            field,
            glob: text.to_owned(),
            source,
        })
}

/// Sorted, each directory once (recursive wins), none under a recursive directory.
fn dedup(mut dirs: Vec<PlanDir>) -> Vec<PlanDir> {
    // Recursive entries sort after non-recursive ones for the same path; keep the last.
    dirs.sort();
    let mut out: Vec<PlanDir> = Vec::new();
    for d in dirs {
        if let Some(last) = out.last_mut() {
            if last.rel == d.rel {
                last.recursive |= d.recursive;
                continue;
            }
        }
        out.push(d);
    }
    let recursive: Vec<PathBuf> = out
        .iter()
        .filter(|d| d.recursive)
        .map(|d| d.rel.clone())
        .collect();
    out.retain(|d| {
        !recursive
            .iter()
            .any(|r| d.rel != *r && d.rel.starts_with(r))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use appvisor_config::{Compare, Signal};
    use std::time::Duration;

    fn cfg(paths: &[&str], soft: &[&str], ignore: &[&str]) -> WatchConfig {
        WatchConfig {
            enabled: true,
            paths: paths.iter().map(|s| s.to_string()).collect(),
            code_dir: "App_Code".into(),
            ignore: ignore.iter().map(|s| s.to_string()).collect(),
            debounce: Duration::from_millis(200),
            max_wait: Duration::from_secs(2),
            compare: Compare::Content,
            soft: soft.iter().map(|s| s.to_string()).collect(),
            soft_signal: Signal {
                name: "SIGHUP",
                number: 1,
            },
            soft_changes_before_recycle: 15,
            poll: None,
        }
    }

    fn dir(rel: &str, recursive: bool) -> PlanDir {
        PlanDir {
            rel: rel.into(),
            recursive,
        }
    }

    #[test]
    fn smallest_directory_set() {
        let cwd = Path::new("/nonexistent/app");
        let m = Matcher::new(
            "app",
            cwd,
            &cfg(
                &[
                    "web.config",
                    "*.config",
                    "./global.*",
                    "config/*.toml",
                    "bin/**",
                    "bin/sub/**",
                    "App_Code/**/*.cs",
                    "deep/a/b/c.json",
                ],
                &["views/**"],
                &[],
            ),
        )
        .unwrap();
        assert_eq!(
            m.dirs,
            vec![
                dir("", false),
                dir("App_Code", true),
                dir("bin", true),
                dir("config", false),
                dir("deep/a/b", false),
                dir("views", true),
            ]
        );
    }

    #[test]
    fn what_counts() {
        let m = Matcher::new(
            "app",
            Path::new("/srv/app"),
            &cfg(
                &["web.config", "*.config", "bin/**", "App_Code/**/*.cs"],
                &["views/**"],
                &["**/.git/**", "**/*.swp", "*~", "node_modules/"],
            ),
        )
        .unwrap();
        let w = |p: &str| m.is_watched(Path::new(p));
        assert!(w("web.config"));
        assert!(w("app.config"));
        assert!(!w("sub/app.config"), "*.config is anchored at the cwd");
        assert!(w("bin"), "the directory of a dir/** glob counts itself");
        assert!(w("bin/a.dll"));
        assert!(w("bin/x/y/z.so"));
        assert!(!w("bin/.git/HEAD"));
        assert!(!w("bin/.git"));
        assert!(!w("bin/.a.dll.swp"));
        assert!(!w("bin/a.dll~"));
        assert!(!w("bin/node_modules/x/y.js"));
        assert!(w("App_Code/x/y.cs"));
        assert!(!w("App_Code/x/y.txt"));
        assert!(w("views/a.html"));
        assert!(m.is_soft(Path::new("views/a.html")));
        assert!(!m.is_soft(Path::new("bin/a.dll")));
        // A directory created under App_Code may hold .cs files: structural events count.
        assert!(m.is_relevant(Path::new("App_Code/newdir"), true));
        assert!(!m.is_relevant(Path::new("App_Code/notes.txt"), false));
        assert!(!m.is_relevant(Path::new("uploads/x.tmp"), true));
        assert!(m.touches_plan(Path::new("App_Code")));
        assert!(!m.touches_plan(Path::new("App_Code/x")));
    }

    #[test]
    fn bad_glob_names_app_and_field() {
        let err = Matcher::new("shop", Path::new("/srv"), &cfg(&["bin/[a"], &[], &[])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("shop") && msg.contains("paths") && msg.contains("bin/[a"),
            "{msg}"
        );
    }
}
