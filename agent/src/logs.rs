//! Full task logs: every attempt's complete stdout and stderr, raw (not redacted), on the
//! agent's disk, under `--log-dir`, bounded by `--log-max-age` and `--log-max-bytes`.
//!
//! Layout: `<log dir>/<run dir>/<task>.<attempt>.out` and `.err` — one file per attempt and
//! stream. Two files rather than one interleaved file with an index: a byte range of one
//! stream is a seek, following is reading on at an offset, and the writer needs no index or
//! framing (each pipe's reader appends its own file, the executor's or the shim's, with no lock
//! between them); what is lost is the exact interleaving of the two streams, which the
//! streamed output (`watch`) shows anyway. `<run dir>` is the run id when it is made of
//! `[A-Za-z0-9_-]` (coordinators make UUIDs), else `x` and its bytes in hex; `<task>` is the
//! task's index in the plan. A task's name never reaches a path.
//!
//! Directories are mode 0700 and files 0600: a log holds the task's raw output, secrets and
//! all. When retention removes an attempt's files it leaves `<task>.<attempt>.removed` (a
//! few bytes: when and why), so a reader is told the log was removed rather than never kept.
//!
//! Who writes: the executor for a task it runs itself, the shim for one it supervises (the
//! agent writes the two paths into the attempt directory's `log` file); each where the raw
//! bytes are read from the task's pipe, in the same read, so memory stays bounded by the read
//! buffer (a flush happens at 64 KiB and whenever the pipe has nothing more buffered).

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub mod serve;

/// Written at once when this much is buffered.
const FLUSH_AT: usize = 64 << 10;
/// Removal records older than this past `--log-max-age` go too.
const FORGET_REMOVED_AFTER: Duration = Duration::from_secs(30 * 24 * 3600);

/// `--log-dir`, `--log-max-age`, `--log-max-bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub dir: PathBuf,
    pub max_age: Duration,
    pub max_bytes: u64,
}

/// The log files of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPaths {
    /// `<dir>/<run dir>/<task>.<attempt>`: the files are this plus `.out`, `.err`, `.removed`.
    pub base: PathBuf,
}

impl LogPaths {
    pub fn stdout(&self) -> PathBuf {
        self.with("out")
    }
    pub fn stderr(&self) -> PathBuf {
        self.with("err")
    }
    pub fn removed(&self) -> PathBuf {
        self.with("removed")
    }
    fn with(&self, ext: &str) -> PathBuf {
        let mut s = self.base.clone().into_os_string();
        s.push(".");
        s.push(ext);
        PathBuf::from(s)
    }
}

/// The agent's logs: where they are, which are still being written, and their retention.
#[derive(Debug, Clone)]
pub struct LogBook {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: LogSettings,
    /// Bases of the attempts still running here: never removed, followed until they end.
    live: Mutex<HashSet<PathBuf>>,
    /// An attempt ended: `--log-max-bytes` is checked soon (at most once a second).
    ended: tokio::sync::Notify,
}

impl LogBook {
    /// Creates the log directory (mode 0700) if it is not there.
    pub fn open(settings: LogSettings) -> std::io::Result<LogBook> {
        private_dir(&settings.dir)?;
        Ok(LogBook {
            inner: Arc::new(Inner {
                settings,
                live: Mutex::new(HashSet::new()),
                ended: tokio::sync::Notify::new(),
            }),
        })
    }

    pub fn settings(&self) -> &LogSettings {
        &self.inner.settings
    }

    /// The attempt's files (`None` for a run id too long to be a directory name).
    pub fn paths(&self, run: &str, task: u32, attempt: u32) -> Option<LogPaths> {
        let dir = run_dir(run)?;
        Some(LogPaths {
            base: self
                .inner
                .settings
                .dir
                .join(dir)
                .join(format!("{task}.{attempt}")),
        })
    }

    /// An attempt starts here: its (empty) files are created and it counts as live until
    /// [`LogBook::end`]. `None` if they cannot be made (the task runs anyway, without a log).
    pub fn begin(&self, run: &str, task: u32, attempt: u32) -> Option<LogPaths> {
        let paths = self.paths(run, task, attempt)?;
        let made = paths
            .base
            .parent()
            .map_or(Ok(()), private_dir)
            .and_then(|()| append(&paths.stdout()).map(drop))
            .and_then(|()| append(&paths.stderr()).map(drop));
        if let Err(e) = made {
            tracing::warn!(base = %paths.base.display(), error = %e, "cannot create the attempt's log files; its full log is not kept");
            return None;
        }
        let _ = fs::remove_file(paths.removed());
        self.live(&paths);
        Some(paths)
    }

    /// The attempt is running here (adopted after a restart): keep and follow its log.
    pub fn live(&self, paths: &LogPaths) {
        self.lock().insert(paths.base.clone());
    }

    /// The attempt ended: its log is complete.
    pub fn end(&self, run: &str, task: u32, attempt: u32) {
        if let Some(p) = self.paths(run, task, attempt) {
            self.lock().remove(&p.base);
        }
        self.inner.ended.notify_one();
    }

    pub fn is_live(&self, paths: &LogPaths) -> bool {
        self.lock().contains(&paths.base)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<PathBuf>> {
        self.inner.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enforces retention at `now`: attempts older than `--log-max-age` go, then the oldest
    /// until what is left fits `--log-max-bytes`. Live attempts stay. Returns how many went.
    pub fn sweep(&self, now: SystemTime) -> usize {
        let s = &self.inner.settings;
        let mut attempts = self.scan(now);
        let mut total: u64 = attempts.iter().map(|a| a.bytes).sum();
        attempts.sort_by_key(|a| a.modified);
        let mut removed = 0;
        for a in &attempts {
            let old = now.duration_since(a.modified).unwrap_or_default() > s.max_age;
            let over = total > s.max_bytes;
            if !(old || over) || self.is_live(&a.paths) {
                continue;
            }
            let why = if old {
                format!("older than --log-max-age {}", humantime(s.max_age))
            } else {
                format!(
                    "the oldest when the logs passed --log-max-bytes {}",
                    s.max_bytes
                )
            };
            let _ = fs::remove_file(a.paths.stdout());
            let _ = fs::remove_file(a.paths.stderr());
            let since = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let _ = write_private(&a.paths.removed(), format!("{since} {why}\n").as_bytes());
            total = total.saturating_sub(a.bytes);
            removed += 1;
        }
        if removed > 0 {
            tracing::info!(
                removed,
                bytes_left = total,
                "log retention removed old task logs"
            );
        }
        removed
    }

    /// Every attempt with log files (removal records older than their time are deleted, and
    /// run directories left empty).
    fn scan(&self, now: SystemTime) -> Vec<OnDisk> {
        let s = &self.inner.settings;
        let mut found: Vec<OnDisk> = vec![];
        let Ok(runs) = fs::read_dir(&s.dir) else {
            return found;
        };
        for run in runs.flatten() {
            let Ok(files) = fs::read_dir(run.path()) else {
                continue;
            };
            // This run's attempts by base: a directory can hold thousands (one lookup each).
            let mut here: HashMap<PathBuf, OnDisk> = HashMap::new();
            let mut any = false;
            for f in files.flatten() {
                any = true;
                let path = f.path();
                let (Some(stem), Some(ext)) = (path.file_stem(), path.extension()) else {
                    continue;
                };
                let Ok(meta) = f.metadata() else { continue };
                let modified = meta.modified().unwrap_or(now);
                if ext == "removed" {
                    let forget = s.max_age.saturating_add(FORGET_REMOVED_AFTER);
                    if now.duration_since(modified).unwrap_or_default() > forget {
                        let _ = fs::remove_file(&path);
                    }
                    continue;
                }
                if ext != "out" && ext != "err" {
                    continue;
                }
                let base = run.path().join(stem);
                let a = here.entry(base.clone()).or_insert(OnDisk {
                    paths: LogPaths { base },
                    bytes: 0,
                    modified,
                });
                a.bytes += meta.len();
                a.modified = a.modified.max(modified);
            }
            found.extend(here.into_values());
            if !any {
                let _ = fs::remove_dir(run.path());
            }
        }
        found
    }
}

/// Opens the log directory of `settings` (none: `None`), enforces retention now, and again
/// every so often (a quarter of `--log-max-age`, between 1 s and a minute) and after attempts
/// end (at most once a second), while `life` lasts.
pub fn keep(
    settings: Option<LogSettings>,
    life: &factotum_service::Lifecycle,
) -> anyhow::Result<Option<LogBook>> {
    use anyhow::Context;
    let Some(settings) = settings else {
        tracing::info!("--log-dir off: full task logs are not kept");
        return Ok(None);
    };
    let dir = settings.dir.clone();
    let book = LogBook::open(settings)
        .with_context(|| format!("cannot use --log-dir {}", dir.display()))?;
    let every =
        (book.settings().max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let (sweeper, stop) = (book.clone(), life.token.clone());
    // The first sweep runs at once, in the background too: a directory of many old logs must
    // not hold the agent's start (it connects and takes leases while the sweep goes on).
    life.spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = sweeper.inner.ended.notified() => {}
                () = stop.cancelled() => return,
            }
            let b = sweeper.clone();
            let _ = tokio::task::spawn_blocking(move || b.sweep(SystemTime::now())).await;
            // A scan of the whole directory: not more than once a second, however many end.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = stop.cancelled() => return,
            }
        }
    });
    tracing::info!(dir = %dir.display(), max_age = %humantime(book.settings().max_age), max_bytes = book.settings().max_bytes, "keeping full task logs");
    Ok(Some(book))
}

/// One attempt's files as a sweep finds them.
struct OnDisk {
    paths: LogPaths,
    bytes: u64,
    modified: SystemTime,
}

/// Why an attempt's log is not there, if retention removed it: its removal record.
pub fn removal(paths: &LogPaths, now: SystemTime) -> Option<String> {
    let text = fs::read_to_string(paths.removed()).ok()?;
    let (at, why) = text.trim().split_once(' ')?;
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(at.parse().ok()?);
    let ago = now.duration_since(at).unwrap_or_default();
    Some(format!(
        "removed by the agent's log retention {} ago ({why})",
        humantime(Duration::from_secs(ago.as_secs()))
    ))
}

fn humantime(d: Duration) -> String {
    factotum_service::duration::show(d)
}

/// The directory name of a run's logs: its id when that is a safe file name, else `x` and
/// the id's bytes in hex; `None` for an id too long either way.
fn run_dir(run: &str) -> Option<String> {
    let plain = !run.is_empty()
        && run.len() <= 128
        && run
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        return Some(run.to_string());
    }
    (!run.is_empty() && run.len() <= 100).then(|| {
        let hex: String = run.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x{hex}")
    })
}

/// The default `--log-dir` of an agent without one: `<state dir>/logs`; without a state
/// directory, `$XDG_STATE_HOME/factotum/logs/<agent>` (`~/.local/state/…`), else the temporary
/// directory's `factotum-logs-<agent>`. Per agent name, so two agents on one host keep apart.
pub fn default_dir(state_dir: Option<&Path>, agent: &str) -> PathBuf {
    if let Some(state) = state_dir {
        return state.join("logs");
    }
    let name: String = agent
        .chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                true => c,
                false => '_',
            },
        )
        .collect();
    let name = match name.trim_start_matches('.') {
        "" => "agent".to_string(),
        n => n.to_string(),
    };
    let xdg = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|h| h.join(".local/state"))
        });
    match xdg {
        Some(base) => base.join("factotum").join("logs").join(name),
        None => std::env::temp_dir().join(format!("factotum-logs-{name}")),
    }
}

/// Creates `dir` (and what is above it) with mode 0700 for what it creates, and makes `dir`
/// itself 0700.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Opens `path` to append to it, creating it with mode 0600.
pub fn append(path: &Path) -> std::io::Result<fs::File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
}

/// One stream's log file being written: raw bytes appended as they are read, buffered up to
/// [`FLUSH_AT`]. A failed write (a full disk) is said once and the rest of this log is not
/// kept; the task goes on.
#[derive(Debug)]
pub struct LogWriter {
    file: Option<fs::File>,
    path: PathBuf,
    buf: Vec<u8>,
}

impl LogWriter {
    pub fn open(path: PathBuf) -> LogWriter {
        let file = append(&path)
            .inspect_err(|e| tracing::warn!(path = %path.display(), error = %e, "cannot open a task log; its full log is not kept"))
            .ok();
        LogWriter {
            file,
            path,
            buf: Vec::new(),
        }
    }

    /// Appends raw bytes read from the task.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.file.is_none() {
            return;
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= FLUSH_AT {
            self.flush();
        }
    }

    /// Writes what is buffered: call it before the reader may wait (so a follower sees every
    /// byte the task has written so far) and at the end.
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if let Some(f) = &mut self.file {
            if let Err(e) = f.write_all(&self.buf) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot write a task log; the rest of it is not kept");
                self.file = None;
            }
        }
        self.buf.clear();
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests;
