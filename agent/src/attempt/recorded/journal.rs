//! `<state dir>/journal`: what an agent with `--state-dir` must find after a restart, in one
//! append-only file. One record a line, each written with one `write` and starting with a
//! newline (a record torn by a crash is a line of its own, skipped when read):
//!
//! - `L <name> <lease, hex> <stdout path, hex> <stderr path, hex> <start, unix nanos>`: the agent,
//!   before it spawns the task;
//! - `X <name> <code>`: the task's shell, when it ends (see [`super::script`]);
//! - `F <name>`: the agent, once the coordinator has the result (the attempt is forgotten).
//!
//! Appends of one `write` to a file opened `O_APPEND` do not interleave on Linux (the inode is
//! locked for the write), so the agent and any number of shells share the file. It is compacted
//! (only what is still pending kept) when an agent starts and whenever it has grown past
//! [`COMPACT_AT`].

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use factotum_proto::Lease;

use super::{hex, unhex};

/// The journal's file name in the state directory.
pub const JOURNAL: &str = "journal";

/// Compacted past this size (a lease is a few hundred bytes: some ten thousand tasks).
const COMPACT_AT: u64 = 8 << 20;

/// An attempt the journal says was leased and not yet forgotten.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub lease: Lease,
    pub outputs: [PathBuf; 2],
    pub started: SystemTime,
    /// Its shell's record of its exit code, if it ended.
    pub exit: Option<i32>,
}

/// The agent's side of the journal: it appends leases and forgets.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// The file the last compaction renamed a new one over, still open, and how much of it
    /// was carried over: a shell that opened it just before the rename may append its exit a
    /// moment after the compaction read it. Checked at every `forget` until the next compaction.
    replaced: Option<Replaced>,
}

/// A journal file a compaction replaced, and how many of its bytes are carried over.
type Replaced = (File, u64);

impl Journal {
    /// Opens (creating) `<state>/journal`, compacted; returns what is pending.
    pub fn open(state: &Path) -> std::io::Result<(Journal, Vec<Entry>)> {
        let path = state.join(JOURNAL);
        let (pending, _) = compact(&path)?;
        let file = append(&path)?;
        let replaced = None; // nothing of this process appended to the one it replaced
        Ok((
            Journal {
                path,
                file,
                replaced,
            },
            pending,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records a lease before its task is spawned.
    pub fn lease(&self, name: &str, lease: &Lease, outputs: &[PathBuf; 2]) -> std::io::Result<()> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let rec = format!(
            "\nL {name} {} {} {} {nanos}\n",
            hex(&prost::Message::encode_to_vec(lease)),
            hex(outputs[0].as_os_str().as_encoded_bytes()),
            hex(outputs[1].as_os_str().as_encoded_bytes()),
        );
        (&self.file).write_all(rec.as_bytes())
    }

    /// The coordinator has the attempt's result.
    pub fn forget(&mut self, name: &str) {
        self.carry_late();
        if let Err(e) = (&self.file).write_all(format!("\nF {name}\n").as_bytes()) {
            tracing::warn!(error = %e, "cannot write to the journal");
        }
        if self.file.metadata().is_ok_and(|m| m.len() > COMPACT_AT) {
            self.compact();
        }
    }

    /// Rewrites the journal with what is pending; appends go to the new file from now on.
    pub(super) fn compact(&mut self) {
        self.carry_late();
        match compact(&self.path).and_then(|(_, old)| Ok((append(&self.path)?, old))) {
            Ok((f, old)) => {
                self.file = f;
                self.replaced = old;
            }
            Err(e) => tracing::warn!(error = %e, "cannot compact the journal"),
        }
    }

    /// Copies what shells appended to the replaced file since it was last read into the
    /// journal (whole records: each starts with a newline, so a late one is never glued to
    /// another).
    fn carry_late(&mut self) {
        let Some((old, read)) = &mut self.replaced else {
            return;
        };
        if old.metadata().map_or(true, |m| m.len() <= *read) {
            return;
        }
        let mut late = vec![];
        let got = (old.seek(SeekFrom::Start(*read)))
            .and_then(|_| old.read_to_end(&mut late))
            .and_then(|_| (&self.file).write_all(&late))
            .and_then(|()| (&self.file).write_all(b"\n"));
        match got {
            Ok(()) => *read += late.len() as u64,
            Err(e) => tracing::warn!(error = %e, "cannot carry records over to the journal"),
        }
    }
}

/// The exit code the journal at `path` records for `name`, if any.
pub fn find_exit(path: &Path, name: &str) -> Option<i32> {
    let text = fs::read(path).ok()?;
    let mut code = None;
    for line in text.split(|b| *b == b'\n') {
        if let Ok(Record::Exit(n, c)) = std::str::from_utf8(line).map(parse) {
            if n == name {
                code = Some(c);
            }
        }
    }
    code
}

enum Record<'a> {
    Lease(Box<Entry>),
    Exit(&'a str, i32),
    Forget(&'a str),
    Junk,
}

fn parse(line: &str) -> Record<'_> {
    let f: Vec<&str> = line.split(' ').collect();
    let lease = |f: &[&str]| -> Option<Entry> {
        let [_, name, lease, out, err, nanos] = f else {
            return None;
        };
        let lease = <Lease as prost::Message>::decode(unhex(lease)?.as_slice()).ok()?;
        let path = |h: &str| Some(PathBuf::from(std::ffi::OsString::from_vec(unhex(h)?)));
        Some(Entry {
            name: name.to_string(),
            lease,
            outputs: [path(out)?, path(err)?],
            started: UNIX_EPOCH + Duration::from_nanos(nanos.parse().ok()?),
            exit: None,
        })
    };
    match f[..] {
        ["L", ..] => lease(&f).map_or(Record::Junk, |e| Record::Lease(Box::new(e))),
        ["X", name, code] => code.parse().map_or(Record::Junk, |c| Record::Exit(name, c)),
        ["F", name] => Record::Forget(name),
        _ => Record::Junk,
    }
}

/// Applies the records in `bytes` (whole lines; a last line without its newline is left, its
/// length returned) to `pending`.
fn apply(bytes: &[u8], pending: &mut BTreeMap<String, Entry>) -> usize {
    let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    for line in bytes[..whole].split(|b| *b == b'\n') {
        match std::str::from_utf8(line).map(parse) {
            Ok(Record::Lease(e)) => {
                pending.insert(e.name.clone(), *e);
            }
            Ok(Record::Exit(name, code)) => {
                if let Some(e) = pending.get_mut(name) {
                    e.exit = Some(code);
                }
            }
            Ok(Record::Forget(name)) => {
                pending.remove(name);
            }
            _ => {}
        }
    }
    bytes.len() - whole
}

fn record(e: &Entry) -> String {
    let nanos = e.started.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut r = format!(
        "\nL {} {} {} {} {}\n",
        e.name,
        hex(&prost::Message::encode_to_vec(&e.lease)),
        hex(e.outputs[0].as_os_str().as_encoded_bytes()),
        hex(e.outputs[1].as_os_str().as_encoded_bytes()),
        nanos.as_nanos()
    );
    if let Some(code) = e.exit {
        r.push_str(&format!("\nX {} {code}\n", e.name));
    }
    r
}

/// Rewrites the journal with only what is pending (a new file renamed over it) and returns that,
/// with the old file and how much of it was read. A shell that appends its exit while this runs
/// appends to the old file: what the old file got after it was read is read again once the new
/// one is in place, and carried over (and later appends by [`Journal`]'s `carry_late`).
fn compact(path: &Path) -> std::io::Result<(Vec<Entry>, Option<Replaced>)> {
    let mut old = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            append(path)?;
            return Ok((vec![], None));
        }
        Err(e) => return Err(e),
    };
    let mut bytes = vec![];
    old.read_to_end(&mut bytes)?;
    let mut pending = BTreeMap::new();
    let torn = apply(&bytes, &mut pending);
    let tmp = path.with_extension("compacting");
    let _ = fs::remove_file(&tmp);
    // Appending: once renamed, shells append to it too.
    let mut new = OpenOptions::new()
        .create_new(true)
        .append(true)
        .mode(0o600)
        .open(&tmp)?;
    let text: String = pending.values().map(record).collect();
    new.write_all(text.as_bytes())?;
    fs::rename(&tmp, path)?;
    // Late appends to the old file: carried over (a torn line included, it may have been
    // finished meanwhile).
    old.seek(SeekFrom::Start((bytes.len() - torn) as u64))?;
    let mut late = vec![];
    old.read_to_end(&mut late)?;
    if late.len() > torn {
        apply(&late, &mut pending);
        new.write_all(&late)?;
        new.write_all(b"\n")?;
    }
    let read = (bytes.len() - torn + late.len()) as u64;
    Ok((pending.into_values().collect(), Some((old, read))))
}

fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}
