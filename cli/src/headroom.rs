//! How many more processes this machine lets `factotum run` start: the tightest of the user's
//! `RLIMIT_NPROC`, the kernel's `pid_max` and `threads-max`, and the cgroup's `pids.max`, less
//! what already runs under each. A local run never starts more tasks at once than half of it
//! (a task is `sh` and at least the command it runs), so a wide factfile waits instead of
//! failing on `fork`.

use std::path::Path;

/// Processes kept free for everything else on the machine (the runner's own threads included).
const RESERVE: u64 = 64;

/// The most tasks a local run may start at once given the machine's process limits, or `None`
/// when nothing limits it (or nothing could be read).
pub fn task_limit() -> Option<u32> {
    let free = free_processes()?;
    let tasks = free.saturating_sub(RESERVE) / 2;
    Some(u32::try_from(tasks.max(1)).unwrap_or(u32::MAX))
}

/// Processes that can still be started: the tightest limit less what runs under it.
fn free_processes() -> Option<u64> {
    let threads = threads_running();
    [
        nproc_limit().map(|max| max.saturating_sub(user_processes())),
        read_u64("/proc/sys/kernel/pid_max").and_then(|max| Some(max.saturating_sub(threads?))),
        read_u64("/proc/sys/kernel/threads-max").and_then(|max| Some(max.saturating_sub(threads?))),
        cgroup_pids(),
    ]
    .into_iter()
    .flatten()
    .min()
}

/// `RLIMIT_NPROC` (soft), unless unlimited. Root is not held to it, so it does not count then.
fn nproc_limit() -> Option<u64> {
    if nix::unistd::geteuid().is_root() {
        return None;
    }
    let (soft, _) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NPROC).ok()?;
    (soft != nix::sys::resource::RLIM_INFINITY).then_some(soft)
}

/// Threads of every process on the machine (`/proc/loadavg`'s `running/total`).
fn threads_running() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace()
        .nth(3)?
        .split('/')
        .nth(1)?
        .parse()
        .ok()
}

/// Threads of this user's processes (what `RLIMIT_NPROC` counts).
fn user_processes() -> u64 {
    let me = nix::unistd::getuid().as_raw();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter(|status| uid_of(status) == Some(me))
        .map(|status| threads_of(&status).unwrap_or(1))
        .sum()
}

fn field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
}

fn uid_of(status: &str) -> Option<u32> {
    field(status, "Uid:")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn threads_of(status: &str) -> Option<u64> {
    field(status, "Threads:")?.parse().ok()
}

/// `pids.max - pids.current` of this process's cgroup, unless `max`: the v1 `pids` hierarchy
/// when there is one, else v2.
fn cgroup_pids() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let v1 = own.lines().find_map(|l| {
        let (_, rest) = l.split_once(':')?;
        let (controllers, path) = rest.split_once(':')?;
        controllers.split(',').any(|c| c == "pids").then_some(path)
    });
    let dir = match v1 {
        Some(path) => Path::new("/sys/fs/cgroup/pids").join(path.trim_start_matches('/')),
        None => {
            let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
            Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'))
        }
    };
    let max = read_u64(dir.join("pids.max"))?;
    let current = read_u64(dir.join("pids.current")).unwrap_or(0);
    Some(max.saturating_sub(current))
}

fn read_u64(path: impl AsRef<Path>) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_leaves_room_for_some_tasks() {
        let n = task_limit().expect("Linux has a pid_max");
        assert!(n >= 1);
        let pid_max = read_u64("/proc/sys/kernel/pid_max").unwrap();
        assert!(u64::from(n) <= pid_max / 2, "{n} of {pid_max}");
    }

    #[test]
    fn status_fields_are_read() {
        let status = "Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nThreads:\t3\n";
        assert_eq!(uid_of(status), Some(1000));
        assert_eq!(threads_of(status), Some(3));
    }
}
