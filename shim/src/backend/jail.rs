//! Per-pod identities for the processes that parse guest input: each pod's hypervisor
//! (hull-vmm or QEMU) and, with QEMU, its vsock daemon run as a uid (and gid of the same
//! number) of their own, taken from a configured range, so a process that a hostile guest
//! takes over can neither signal, trace nor read another pod's, nor touch what root keeps
//! to itself. They start as root (they open `/dev/kvm`, the image and the sockets) and drop to
//! the id before the guest runs ([`for_pod`] prepares what they still need afterwards).
//! hull-vmm and QEMU are also chrooted; the vsock daemon is not (it starts in its own
//! directory, and can still read what any user can on the host).
//!
//! An id is held with an exclusive `flock` on `<lock dir>/<id>.lock` by the pod's shim. The
//! lock dies with the shim; the pod's processes may outlive it (until containerd's cleanup
//! kills them), so an id some process still has is never handed out again ([`JailId::allocate`]
//! scans `/proc`). A [`JailId`] dropped normally removes its lock file, and the cleanup
//! after a killed shim removes the file it left ([`release_stale`]), so a quiet host has an
//! empty lock directory. Because a file can be unlinked between another process's `open` and
//! `flock`, a lock only counts if the locked file is still the one at the path (same inode).
//!
//! The search starts at a slot derived from the pod id, so pods rarely contend for the same
//! id, and walks the whole range before it gives up with an error that names the range.
//!
//! Not here: a user or mount namespace; how each backend drops to the id (hull-vmm's
//! `--uid/--gid/--chroot`, QEMU's `-runas/-chroot` or `-run-with`, the vsock daemon started
//! as the id).
//! virtiofsd stays root: it serves files of every owner (it confines itself with a chroot
//! and seccomp).

use std::collections::hash_map::DefaultHasher;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Where the locks live unless a test says otherwise.
/// (A dot directory: host-wide state, not a pod's.)
pub const DEFAULT_LOCK_DIR: &str = "/run/hull/.jail";

/// The ids pods' VMMs run as: `first..first + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JailRange {
    /// The first id.
    pub first: u32,
    /// How many ids.
    pub count: u32,
}

/// Errors of taking a pod's id.
#[derive(Debug, Error)]
pub enum JailError {
    /// The range is not `FIRST-LAST` with `0 < FIRST <= LAST < 4294967295`.
    #[error("{0:?} is not an id range FIRST-LAST (1 <= FIRST <= LAST <= 4294967294)")]
    BadRange(String),
    /// The lock directory could not be created.
    #[error(
        "creating the jail lock directory {path}: {source} (confining pods to their own ids \
         needs root; jail_ids = \"\" turns it off)"
    )]
    LockDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A lock file could not be opened or locked for a reason other than contention.
    #[error("locking {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Every id of the range is taken.
    #[error("every id of the jail range {first}-{last} is in use by a running pod")]
    Exhausted {
        /// The first id.
        first: u32,
        /// The last id.
        last: u32,
    },
    /// The pod's vsock sockets would lie in the state directory itself.
    #[error("the vsock directory {0} is the pod's state directory; it cannot be given away")]
    VsockDirIsStateDir(PathBuf),
    /// The lock's path could not be recorded in the pod's state directory.
    #[error("recording the pod id's lock in {path}: {source}")]
    Record {
        /// The record file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A socket or directory could not be handed to the pod's id.
    #[error("giving {path} to uid {id}: {source}")]
    Chown {
        /// The file.
        path: PathBuf,
        /// The id.
        id: u32,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl JailRange {
    /// Parses `FIRST-LAST` (inclusive). Root (0) and the "no id" value (`u32::MAX`) are refused.
    pub fn parse(s: &str) -> Result<JailRange, JailError> {
        let bad = || JailError::BadRange(s.to_string());
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let first: u32 = a.trim().parse().map_err(|_| bad())?;
        let last: u32 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || last < first || last == u32::MAX {
            return Err(bad());
        }
        Ok(JailRange {
            first,
            count: last - first + 1,
        })
    }

    /// The last id.
    pub fn last(&self) -> u32 {
        self.first + (self.count - 1)
    }
}

/// One id, held until dropped.
#[derive(Debug)]
pub struct JailId {
    id: u32,
    path: PathBuf,
    _lock: File,
}

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(false)` when another holder has it.
fn try_lock(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a descriptor this function borrows; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Locks `file`, opened at `path`, if nobody holds it and it is still the file at `path`:
/// the previous holder may have unlinked it between our open and our lock, and a lock on a
/// file nobody else can find does not count.
fn claim(file: &File, path: &Path) -> std::io::Result<bool> {
    if !try_lock(file)? {
        return Ok(false);
    }
    let ours = file.metadata()?.ino();
    Ok(matches!(std::fs::metadata(path), Ok(m) if m.ino() == ours))
}

/// A process that has `id` as any of its user or group ids (real, effective, saved, fs).
fn process_with_id(id: u32) -> Option<u32> {
    let id = id.to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let status = std::fs::read_to_string(e.path().join("status")).ok()?;
        status
            .lines()
            .filter(|l| l.starts_with("Uid:") || l.starts_with("Gid:"))
            .any(|l| l.split_whitespace().skip(1).any(|v| v == id))
            .then_some(pid)
    })
}

impl JailId {
    /// Takes a free id of `range`, starting the search at a slot derived from `pod`.
    pub fn allocate(range: JailRange, lock_dir: &Path, pod: &str) -> Result<JailId, JailError> {
        // Root's alone: a process running as a pod's id must not be able to open (and so
        // lock) the locks of other ids.
        let dir_err = |source| JailError::LockDir {
            path: lock_dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(lock_dir).map_err(dir_err)?;
        std::fs::set_permissions(lock_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(dir_err)?;
        let mut h = DefaultHasher::new();
        pod.hash(&mut h);
        let count = u64::from(range.count);
        let start = h.finish() % count;
        for step in 0..count {
            // In u64: first + (a value below count) fits u32 by JailRange's invariant.
            let id = range.first + ((start + step) % count) as u32;
            let path = lock_dir.join(format!("{id}.lock"));
            let lock_err = |source| JailError::Lock {
                path: path.clone(),
                source,
            };
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(lock_err)?;
            if !claim(&lock, &path).map_err(lock_err)? {
                continue;
            }
            // The lock dies with the shim that held it, but the pod's processes may outlive
            // it (a shim killed before anyone cleaned up): an id some process still has is
            // not free. Nobody else can take it while we hold the lock, and nothing can
            // become it without root.
            if let Some(pid) = process_with_id(id) {
                log::warn!("pod id {id} is still used by pid {pid} (a dead pod's?); skipping it");
                // Ours while locked, so removing it is safe; the next allocator recreates it.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            return Ok(JailId {
                id,
                path,
                _lock: lock,
            });
        }
        Err(JailError::Exhausted {
            first: range.first,
            last: range.last(),
        })
    }

    /// The uid (and gid) the pod's VMM runs as.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Gives `path` (a socket the VMM must connect to, or the directory it is confined to)
    /// to this id; a symlink is given itself, never what it points to.
    pub fn give(&self, path: &Path) -> Result<(), JailError> {
        std::os::unix::fs::lchown(path, Some(self.id), Some(self.id)).map_err(|source| {
            JailError::Chown {
                path: path.to_path_buf(),
                id: self.id,
                source,
            }
        })
    }
}

/// The file in a pod's state directory that names its id's lock, for [`release_stale`]
/// after the pod's owner died.
pub const LOCK_RECORD: &str = "jail-lock";

/// Removes the lock file at `path` if nobody holds it: what a killed shim leaves behind
/// (the lock itself died with it). A lock some live pod holds is left alone.
pub fn release_stale(path: &Path) {
    // Only ever a lock file: `<id>.lock`.
    let is_lock = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".lock"))
        .is_some_and(|id| id.parse::<u32>().is_ok());
    if !is_lock {
        log::warn!("not removing {}: not an id lock", path.display());
        return;
    }
    let Ok(file) = File::open(path) else {
        return;
    };
    if matches!(claim(&file, path), Ok(true)) {
        // Unlinked while we hold it: an allocator that opened it meanwhile finds the inode
        // gone from the path and moves on.
        if let Err(e) = std::fs::remove_file(path) {
            log::warn!("removing the stale lock {}: {e}", path.display());
        }
    }
}

/// Takes `spec`'s pod an id and gives it the shim's guest-connection listeners (so the guest
/// can still connect to the host) and, if `owns_dir`, the pod's vsock directory (for a
/// daemon that creates its sockets there). A process that owns the directory can replace the
/// names in it, so the shim connects there only to what is a socket itself
/// ([`crate::vsock::connect_socket_file`]). Records the lock's path in the state directory
/// for [`release_stale`].
pub fn for_pod(
    range: JailRange,
    lock_dir: &Path,
    spec: &super::LaunchSpec,
    owns_dir: bool,
) -> Result<JailId, JailError> {
    let dir = spec.vsock_dir();
    if dir == spec.state_dir {
        // Giving it away would give away the state directory (and the lock record).
        return Err(JailError::VsockDirIsStateDir(dir));
    }
    let id = JailId::allocate(range, lock_dir, &spec.id)?;
    let record = spec.state_dir.join(LOCK_RECORD);
    std::fs::write(&record, id.path.as_os_str().as_encoded_bytes()).map_err(|source| {
        JailError::Record {
            path: record,
            source,
        }
    })?;
    for listener in &spec.guest_listeners {
        id.give(listener)?;
    }
    if owns_dir {
        id.give(&dir)?;
    }
    Ok(id)
}

impl Drop for JailId {
    fn drop(&mut self) {
        // Unlinked while still locked, so nobody can lock this inode and believe it is the
        // id's lock; the lock itself goes when `lock` is closed right after.
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::warn!("removing {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_inclusive_and_never_include_root_or_the_no_id_value() {
        assert_eq!(
            JailRange::parse("1000-1009").unwrap(),
            JailRange {
                first: 1000,
                count: 10
            }
        );
        assert_eq!(JailRange::parse("7-7").unwrap().last(), 7);
        for bad in ["", "5", "0-10", "10-5", "a-b", "1-4294967295", "-3", "3-"] {
            let e = JailRange::parse(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn each_holder_gets_its_own_id_until_the_range_runs_out_and_drop_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("jail");
        let range = JailRange::parse("5000-5002").unwrap();
        let a = JailId::allocate(range, &locks, "pod-a").unwrap();
        let b = JailId::allocate(range, &locks, "pod-a").unwrap();
        let c = JailId::allocate(range, &locks, "pod-c").unwrap();
        let mut ids = vec![a.id(), b.id(), c.id()];
        ids.sort_unstable();
        assert_eq!(ids, [5000, 5001, 5002]);
        let e = JailId::allocate(range, &locks, "pod-d").unwrap_err();
        assert!(
            e.to_string()
                .contains("every id of the jail range 5000-5002 is in use"),
            "{e}"
        );
        let freed = b.id();
        drop(b);
        assert!(!locks.join(format!("{freed}.lock")).exists());
        let d = JailId::allocate(range, &locks, "pod-d").unwrap();
        assert_eq!(d.id(), freed);
        drop((a, c, d));
        assert_eq!(
            std::fs::read_dir(&locks).unwrap().count(),
            0,
            "lock files left"
        );
    }

    #[test]
    fn a_lock_on_a_file_that_was_unlinked_meanwhile_does_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("42.lock");
        // Opened, then unlinked (by its previous holder) and recreated by someone else.
        let stale = File::create(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let fresh = File::create(&path).unwrap();
        assert!(
            !claim(&stale, &path).unwrap(),
            "a lock on the unlinked inode counted"
        );
        assert!(claim(&fresh, &path).unwrap());
        // Held: nobody else claims it.
        let again = File::open(&path).unwrap();
        assert!(!claim(&again, &path).unwrap());
    }

    #[test]
    fn an_id_a_live_process_still_has_is_skipped() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (to start a process as another id)"
        );
        use std::os::unix::process::CommandExt;
        let mut orphan = std::process::Command::new("sleep")
            .arg("30")
            .uid(60200)
            .gid(60200)
            .spawn()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let range = JailRange::parse("60200-60201").unwrap();
        let a = JailId::allocate(range, dir.path(), "p").unwrap();
        assert_eq!(
            a.id(),
            60201,
            "the id a process still runs as was handed out"
        );
        assert!(JailId::allocate(range, dir.path(), "q").is_err());
        assert!(
            !dir.path().join("60200.lock").exists(),
            "the skipped id's file stays"
        );
        orphan.kill().unwrap();
        orphan.wait().unwrap();
        let b = JailId::allocate(range, dir.path(), "q").unwrap();
        assert_eq!(b.id(), 60200);
    }

    #[test]
    fn a_stale_lock_file_is_removed_and_a_held_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let range = JailRange::parse("11-11").unwrap();
        let held = JailId::allocate(range, dir.path(), "live").unwrap();
        release_stale(&held.path);
        assert!(held.path.exists(), "a live pod's lock was removed");
        let path = held.path.clone();
        // A killed holder: the file stays, its lock is gone.
        let left = File::create(dir.path().join("12.lock")).unwrap();
        drop(left);
        release_stale(&dir.path().join("12.lock"));
        assert!(!dir.path().join("12.lock").exists());
        release_stale(&dir.path().join("13.lock")); // none: nothing to do
        drop(held);
        assert!(!path.exists());
    }

    #[test]
    fn the_file_of_a_dead_holder_does_not_keep_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let range = JailRange::parse("9-9").unwrap();
        // A shim that was killed leaves its lock file, but flock locks belong to the open
        // file and die with it.
        let left = File::create(dir.path().join("9.lock")).unwrap();
        assert!(try_lock(&left).unwrap());
        assert!(JailId::allocate(range, dir.path(), "p").is_err(), "held");
        drop(left);
        let again = JailId::allocate(range, dir.path(), "q").unwrap();
        assert_eq!(again.id(), 9);
    }
}
