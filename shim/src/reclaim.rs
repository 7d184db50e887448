//! Reclaiming what a pod left when the process that owned its VM died (a killed shim): its
//! hypervisor and helper processes, mounts, id lock and state directory.
//!
//! containerd runs `containerd-shim-hull-v2 delete` once for a dead shim, within its 5 s
//! cleanup timeout, and never again: whatever that one call leaves stays until an operator
//! finds it. So reclaiming does not trust a single pass. It keeps killing, unmounting and
//! removing until the directory is gone or its budget is spent, and then says what is left.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

/// The file in a state directory that lists the VM's host pids (written at boot).
pub const PIDS_FILE: &str = "pids";

/// The environment variable every process the shim starts for a pod carries: the pod's
/// state directory. Inherited by whatever those processes start in turn.
pub const POD_ENV: &str = "HULL_POD_STATE";

/// How long [`reclaim`] keeps trying: under containerd's 5 s cleanup timeout, with room
/// for the `delete` process's own start.
pub const BUDGET: Duration = Duration::from_secs(3);

/// What [`reclaim`] could not clean within its budget.
#[derive(Debug, Error)]
#[error(
    "could not remove {dir} within {budget:?}: {source}; left: {left:?}; live processes: {pids:?}"
)]
pub struct ReclaimError {
    /// The state directory.
    pub dir: PathBuf,
    /// The budget spent.
    pub budget: Duration,
    /// The last removal error.
    pub source: std::io::Error,
    /// What is still in the directory (a few entries).
    pub left: Vec<PathBuf>,
    /// Processes of the pod still alive.
    pub pids: Vec<i32>,
}

/// Cleans up after a VM whose owner died: kills its processes, unmounts everything below
/// `state_dir`, frees the pod's id lock and removes the directory; repeats until the
/// directory is gone or `budget` is spent. Idempotent; a missing directory is success.
///
/// A process belongs to the pod if it carries the pod's [`POD_ENV`] (every helper the shim
/// started, and their children), or if the pid file lists it and it names the directory in
/// its command line, or works or is rooted inside it (a pod started before the tag; the
/// check keeps a recycled pid from being hit). An operator's shell in the directory is
/// neither, and lives.
pub fn reclaim(state_dir: &Path, budget: Duration) -> Result<(), ReclaimError> {
    let deadline = Instant::now() + budget;
    loop {
        let pids = kill_processes_of(state_dir);
        // SIGKILL takes effect when the process is next scheduled: until then a daemon may
        // still create a socket in the directory (vhost-device-vsock does when QEMU goes
        // away). These are not our children; dead means gone from /proc or a zombie.
        while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // The pod's id is free once its processes are dead; its lock file went with nobody.
        if let Ok(lock) = std::fs::read(state_dir.join(crate::backend::jail::LOCK_RECORD)) {
            use std::os::unix::ffi::OsStrExt;
            crate::backend::jail::release_stale(Path::new(std::ffi::OsStr::from_bytes(&lock)));
        }
        crate::util::unmount_all_under(state_dir);
        // remove_dir_all crosses mount points: with a mount still there (a bind of the
        // bundle's rootfs), it would delete the source's files. Not this pass.
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .map(|info| crate::util::mounts_under(&info, state_dir))
            .unwrap_or_default();
        let removed = match mounted.first() {
            Some(m) => Err(std::io::Error::other(format!(
                "{} is still mounted",
                m.display()
            ))),
            None => std::fs::remove_dir_all(state_dir),
        };
        let source = match removed {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(ReclaimError {
                dir: state_dir.to_path_buf(),
                budget,
                source,
                left: crate::util::entries_under(state_dir, 8),
                pids: pids.into_iter().filter(|&p| alive(p)).collect(),
            });
        }
        log::debug!("{}: {source}; trying again", state_dir.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGKILL to every process of the pod (see [`reclaim`]); returns their pids.
fn kill_processes_of(state_dir: &Path) -> Vec<i32> {
    let listed: Vec<i32> = std::fs::read_to_string(state_dir.join(PIDS_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let mut candidates = listed.clone();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        candidates.extend(
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()),
        );
    }
    candidates.sort_unstable();
    candidates.dedup();
    let me = std::process::id() as i32;
    let mut killed = Vec::new();
    for pid in candidates {
        if pid == me || pid <= 1 || !belongs_to(pid, state_dir, listed.contains(&pid)) {
            continue;
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        killed.push(pid);
    }
    killed
}

/// Whether process `pid` is the pod's (see [`reclaim`]); `listed`: the pid file names it.
fn belongs_to(pid: i32, dir: &Path, listed: bool) -> bool {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    if carries_tag(&environ, dir) {
        return true;
    }
    if !listed {
        return false;
    }
    let inside = |link: &str| {
        std::fs::read_link(format!("/proc/{pid}/{link}")).is_ok_and(|p| p.starts_with(dir))
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    mentions_dir(&cmdline, dir) || inside("cwd") || inside("root")
}

/// Whether a NUL-separated environment holds exactly `POD_ENV=dir`.
fn carries_tag(environ: &[u8], dir: &Path) -> bool {
    let mut tag = format!("{POD_ENV}=").into_bytes();
    tag.extend_from_slice(dir.as_os_str().as_encoded_bytes());
    environ.split(|&b| b == 0).any(|var| var == tag.as_slice())
}

/// Whether a NUL-separated command line names `dir` or a path below it: `dir` preceded by
/// the start of an argument, `=`, `,` or `:` and followed by `/`, `,` (QEMU's option lists)
/// or the end of the argument, so pod `p1` never matches `/run/hull/p10`.
fn mentions_dir(cmdline: &[u8], dir: &Path) -> bool {
    let needle = dir.as_os_str().as_encoded_bytes();
    if needle.is_empty() {
        return false;
    }
    cmdline
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .any(|(at, _)| {
            let before = at.checked_sub(1).map(|i| cmdline[i]);
            matches!(before, None | Some(b'\0' | b'=' | b',' | b':'))
                && matches!(
                    cmdline.get(at + needle.len()),
                    None | Some(b'/' | b',' | b'\0')
                )
        })
}

/// Whether `pid` still runs (exists and is not a zombie).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold any byte.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dir_is_named_only_whole() {
        let dir = Path::new("/run/hull/p1");
        for yes in [
            &b"qemu\0-kernel\0/run/hull/p1/k"[..],
            b"virtiofsd\0--shared-dir\0/run/hull/p1",
            b"qemu\0-chardev\0file,path=/run/hull/p1,id=c",
            b"x\0/run/hull/p1\0y",
        ] {
            assert!(mentions_dir(yes, dir), "{}", String::from_utf8_lossy(yes));
        }
        for no in [
            &b"qemu\0-kernel\0/run/hull/p10/k"[..],
            b"sleep\x0060",
            b"/run/hull/p1x",
            b"cat\0/x/run/hull/p1/k",
            b"",
        ] {
            assert!(!mentions_dir(no, dir), "{}", String::from_utf8_lossy(no));
        }
        assert!(!mentions_dir(b"anything", Path::new("")));
    }

    #[test]
    fn a_dead_owners_pod_is_reclaimed_whole_and_nothing_else() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("pod");
        let neighbour = root.path().join("pod2");
        std::fs::create_dir_all(state.join("vsock")).unwrap();
        std::fs::create_dir_all(&neighbour).unwrap();
        std::fs::write(state.join("console.log"), b"").unwrap();
        std::fs::write(neighbour.join("console.log"), b"").unwrap();
        let spawn = |program: &str, args: &[&Path], cwd: &Path, tag: Option<&Path>| {
            let mut cmd = std::process::Command::new(program);
            cmd.args(args).current_dir(cwd);
            if let Some(pod) = tag {
                cmd.env(POD_ENV, pod);
            }
            cmd.spawn().unwrap()
        };
        // Belong to the pod: one in the pid file naming the directory; one tagged that the
        // pid file does not list (as a helper's own child would). Do not: one of a pod
        // whose name starts with this one's; one listed in the pid file that has nothing
        // to do with the pod (a recycled pid); an operator's, working in the directory.
        let follow = Path::new("-f");
        let minute = Path::new("60");
        let log = state.join("console.log");
        let mut named = spawn("tail", &[follow, &log], root.path(), None);
        let mut tagged = spawn("sleep", &[minute], root.path(), Some(&state));
        let neighbours_log = neighbour.join("console.log");
        let mut neighbours = spawn("tail", &[follow, &neighbours_log], root.path(), None);
        let mut recycled = spawn("sleep", &[minute], root.path(), None);
        let mut operators = spawn("sleep", &[minute], &state.join("vsock"), None);
        std::fs::write(
            state.join(PIDS_FILE),
            format!("{}\n{}\n", named.id(), recycled.id()),
        )
        .unwrap();
        // A lock file nobody holds (its pod's shim was killed) goes too.
        let lock = root.path().join("77.lock");
        std::fs::write(&lock, b"").unwrap();
        std::fs::write(
            state.join(crate::backend::jail::LOCK_RECORD),
            lock.as_os_str().as_encoded_bytes(),
        )
        .unwrap();

        reclaim(&state, BUDGET).unwrap();
        assert!(!state.exists());
        assert!(!lock.exists());
        // Killed (reaped here, as their parent): SIGKILL, not an exit.
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(named.wait().unwrap().signal(), Some(9));
        assert_eq!(tagged.wait().unwrap().signal(), Some(9));
        for survivor in [&mut neighbours, &mut recycled, &mut operators] {
            assert!(
                survivor.try_wait().unwrap().is_none(),
                "a process of another pod or none was killed"
            );
            survivor.kill().unwrap();
            survivor.wait().unwrap();
        }
        assert!(neighbour.exists());
        // Again, on nothing: success.
        reclaim(&state, BUDGET).unwrap();
    }

    #[test]
    fn what_cannot_be_removed_is_named_after_the_budget() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("pod");
        std::fs::create_dir_all(state.join("share")).unwrap();
        std::fs::write(state.join("share/kept"), b"").unwrap();
        // Not removable: its parent is read-only (root ignores modes, so use an immutable
        // attribute where we are root and a mode otherwise).
        let guard = ReadOnly::set(&state.join("share"));
        let started = Instant::now();
        let e = reclaim(&state, Duration::from_millis(300)).unwrap_err();
        drop(guard);
        assert!(started.elapsed() >= Duration::from_millis(300));
        let text = e.to_string();
        assert!(text.contains(&state.display().to_string()), "{text}");
        assert!(text.contains("kept"), "{text}");
    }

    /// Makes a directory's entries unremovable for as long as it lives.
    struct ReadOnly(PathBuf);

    impl ReadOnly {
        fn set(dir: &Path) -> ReadOnly {
            use std::os::unix::fs::PermissionsExt;
            if nix::unistd::geteuid().is_root() {
                let st = std::process::Command::new("chattr")
                    .arg("+i")
                    .arg(dir)
                    .status()
                    .unwrap();
                assert!(st.success(), "chattr +i {}", dir.display());
            } else {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
            }
            ReadOnly(dir.to_path_buf())
        }
    }

    impl Drop for ReadOnly {
        fn drop(&mut self) {
            use std::os::unix::fs::PermissionsExt;
            if nix::unistd::geteuid().is_root() {
                let _ = std::process::Command::new("chattr")
                    .arg("-i")
                    .arg(&self.0)
                    .status();
            } else {
                let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o755));
            }
        }
    }
}
