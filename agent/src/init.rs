//! PID 1 duties of the agent: the guest's base filesystems, `/dev` links and cgroup v2
//! controllers. (Reaping is [`crate::reaper`]'s.)
//!
//! Every step is best effort: a failed step is logged and returned in an [`InitReport`],
//! never fatal, because PID 1 exiting panics the guest kernel. Steps take a `root` prefix
//! so tests can run them against a scratch directory on the host. This module does not
//! start containers or configure networking.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use thiserror::Error;

/// One failed init step.
#[derive(Debug, Error)]
pub enum InitError {
    /// Creating a mount point failed.
    #[error("creating mount point {path}: {source}")]
    CreateMountPoint {
        /// The directory that could not be created.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A mount(2) call failed.
    #[error("mounting {fstype} on {target}: {source}")]
    Mount {
        /// Filesystem type that was mounted.
        fstype: &'static str,
        /// Where it was mounted.
        target: PathBuf,
        /// The underlying error.
        source: nix::Error,
    },
    /// Creating a `/dev` symlink failed.
    #[error("linking {link} -> {target}: {source}")]
    Symlink {
        /// The link path.
        link: PathBuf,
        /// What it points to.
        target: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// Enabling cgroup v2 controllers for child groups failed.
    #[error("enabling cgroup controllers {controllers:?}: {source}")]
    CgroupControllers {
        /// The controllers that were asked for.
        controllers: String,
        /// The underlying error.
        source: io::Error,
    },
}

/// A filesystem PID 1 mounts, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountEntry {
    /// Filesystem type (also used as the mount source).
    pub fstype: &'static str,
    /// Target, relative to the root.
    pub target: &'static str,
    /// Mount flags.
    pub flags: MsFlags,
    /// Filesystem-specific options.
    pub data: &'static str,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// The guest's base mounts. Order matters: `/dev` before `/dev/pts` and `/dev/shm`,
/// `/sys` before `/sys/fs/cgroup`.
pub const BASE_MOUNTS: &[MountEntry] = &[
    MountEntry {
        fstype: "proc",
        target: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    MountEntry {
        fstype: "sysfs",
        target: "sys",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    MountEntry {
        fstype: "devtmpfs",
        target: "dev",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
    MountEntry {
        fstype: "devpts",
        target: "dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "newinstance,ptmxmode=0666,mode=0620,gid=5",
    },
    MountEntry {
        fstype: "tmpfs",
        target: "dev/shm",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
    MountEntry {
        fstype: "cgroup2",
        target: "sys/fs/cgroup",
        flags: NOSUID_NODEV_NOEXEC,
        data: "nsdelegate",
    },
    MountEntry {
        fstype: "tmpfs",
        target: "run",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=0755",
    },
    MountEntry {
        fstype: "tmpfs",
        target: "tmp",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
];

/// Symlinks every Linux userland expects in `/dev`.
pub const DEV_LINKS: &[(&str, &str)] = &[
    ("dev/fd", "/proc/self/fd"),
    ("dev/stdin", "/proc/self/fd/0"),
    ("dev/stdout", "/proc/self/fd/1"),
    ("dev/stderr", "/proc/self/fd/2"),
];

/// Controllers delegated to child cgroups (containers), where the kernel has them.
pub const CGROUP_CONTROLLERS: &[&str] = &["cpu", "cpuset", "memory", "pids", "io"];

/// What the init steps did: the mounts made and the steps that failed.
#[derive(Debug, Default)]
pub struct InitReport {
    /// Targets mounted, in order.
    pub mounted: Vec<PathBuf>,
    /// Steps that failed; the agent goes on without them.
    pub errors: Vec<InitError>,
}

/// Mounts [`BASE_MOUNTS`] below `root`, creating mount points as needed.
pub fn mount_base(root: &Path, report: &mut InitReport) {
    for m in BASE_MOUNTS {
        let target = root.join(m.target);
        if let Err(source) = fs::create_dir_all(&target) {
            report.errors.push(InitError::CreateMountPoint {
                path: target,
                source,
            });
            continue;
        }
        let data = (!m.data.is_empty()).then_some(m.data);
        match mount(Some(m.fstype), &target, Some(m.fstype), m.flags, data) {
            Ok(()) => report.mounted.push(target),
            Err(source) => report.errors.push(InitError::Mount {
                fstype: m.fstype,
                target,
                source,
            }),
        }
    }
}

/// Creates [`DEV_LINKS`] below `root`; existing links are left alone.
pub fn link_dev(root: &Path, report: &mut InitReport) {
    for (link, target) in DEV_LINKS {
        let link = root.join(link);
        match std::os::unix::fs::symlink(target, &link) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => report.errors.push(InitError::Symlink {
                link,
                target,
                source,
            }),
        }
    }
}

/// The controllers to enable: those of [`CGROUP_CONTROLLERS`] that `available` (the content
/// of `cgroup.controllers`) lists, as a `cgroup.subtree_control` write.
pub fn subtree_control_line(available: &str) -> String {
    let have: Vec<&str> = available.split_whitespace().collect();
    CGROUP_CONTROLLERS
        .iter()
        .filter(|c| have.contains(c))
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Enables the container controllers for the children of the cgroup at `cgroup_root`.
pub fn enable_cgroup_controllers(cgroup_root: &Path, report: &mut InitReport) {
    let result = fs::read_to_string(cgroup_root.join("cgroup.controllers")).and_then(|avail| {
        let line = subtree_control_line(&avail);
        if line.is_empty() {
            return Ok(());
        }
        fs::write(cgroup_root.join("cgroup.subtree_control"), &line)
    });
    if let Err(source) = result {
        report.errors.push(InitError::CgroupControllers {
            controllers: CGROUP_CONTROLLERS.join(" "),
            source,
        });
    }
}

/// Runs every PID 1 init step against the real root.
pub fn setup_pid1() -> InitReport {
    let root = Path::new("/");
    let mut report = InitReport::default();
    mount_base(root, &mut report);
    link_dev(root, &mut report);
    enable_cgroup_controllers(&root.join("sys/fs/cgroup"), &mut report);
    // Programs started later (containers' hooks, debugging) find the usual PATH.
    std::env::set_var(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtree_control_enables_only_what_the_kernel_has() {
        assert_eq!(
            subtree_control_line("cpuset cpu io memory hugetlb pids misc\n"),
            "+cpu +cpuset +memory +pids +io"
        );
        assert_eq!(subtree_control_line("memory pids"), "+memory +pids");
        assert_eq!(subtree_control_line(""), "");
    }

    #[test]
    fn mount_order_puts_parents_first() {
        for (i, m) in BASE_MOUNTS.iter().enumerate() {
            for earlier in &BASE_MOUNTS[..i] {
                assert!(
                    !earlier.target.starts_with(&format!("{}/", m.target)),
                    "{} is mounted before its parent {}",
                    earlier.target,
                    m.target
                );
            }
            if let Some((parent, _)) = m.target.rsplit_once('/') {
                assert!(
                    BASE_MOUNTS[..i].iter().any(|e| e.target == parent)
                        || !BASE_MOUNTS.iter().any(|e| e.target == parent),
                    "{} comes before its parent {parent}",
                    m.target
                );
            }
        }
    }

    #[test]
    fn dev_links_are_created_once_and_tolerate_reruns() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("dev")).unwrap();
        let mut report = InitReport::default();
        link_dev(dir.path(), &mut report);
        link_dev(dir.path(), &mut report);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(
            fs::read_link(dir.path().join("dev/stdout")).unwrap(),
            Path::new("/proc/self/fd/1")
        );
    }

    #[test]
    fn cgroup_controllers_are_written_to_subtree_control() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cgroup.controllers"), "memory pids rdma\n").unwrap();
        let mut report = InitReport::default();
        enable_cgroup_controllers(dir.path(), &mut report);
        assert!(report.errors.is_empty());
        assert_eq!(
            fs::read_to_string(dir.path().join("cgroup.subtree_control")).unwrap(),
            "+memory +pids"
        );
    }

    #[test]
    fn a_missing_cgroup_root_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let mut report = InitReport::default();
        enable_cgroup_controllers(&dir.path().join("nope"), &mut report);
        assert!(matches!(
            report.errors[..],
            [InitError::CgroupControllers { .. }]
        ));
    }

    /// Mounts the real base filesystems under a scratch root. The mounting half runs in a
    /// re-executed copy of this test binary inside a private mount namespace, so nothing
    /// can leak into the host's mount table; the parent half checks that it succeeded.
    #[test]
    fn base_mounts_succeed_as_root_in_a_private_namespace() {
        const ROOT_VAR: &str = "HULL_AGENT_TEST_MOUNT_ROOT";
        if let Ok(root) = std::env::var(ROOT_VAR) {
            let root = PathBuf::from(root);
            mount::<str, str, str, str>(
                None,
                "/",
                None,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None,
            )
            .expect("making / private in the test's mount namespace");
            let mut report = InitReport::default();
            mount_base(&root, &mut report);
            link_dev(&root, &mut report);
            assert!(report.errors.is_empty(), "{:?}", report.errors);
            assert_eq!(report.mounted.len(), BASE_MOUNTS.len());
            assert!(root.join("proc/self/status").exists());
            assert!(root.join("sys/fs/cgroup/cgroup.controllers").exists());
            assert!(root.join("dev/null").exists());
            assert!(root.join("dev/pts/ptmx").exists());
            assert!(root.join("dev/fd").read_link().is_ok());
            return;
        }
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test mounts filesystems and needs root; run the suite as root"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "init::tests::base_mounts_succeed_as_root_in_a_private_namespace",
        ])
        .arg("--nocapture")
        .env(ROOT_VAR, dir.path());
        // SAFETY: the closure runs between fork and exec and only makes the unshare(2)
        // syscall, which is async-signal-safe; it allocates nothing and takes no locks.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(io::Error::from)
            });
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "mounting in the child failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
        // The namespace died with the child: nothing is mounted under the scratch root.
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(dir.path().to_str().unwrap()));
    }
}
