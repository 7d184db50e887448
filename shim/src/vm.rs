//! One microVM's lifecycle, independent of the hypervisor: state directory, boot, readiness,
//! the agent connection, and stop.
//!
//! Boot: check the inputs (before anything is created), create `<state_root>/<id>/`, listen
//! for the agent's readiness announcement, launch the backend, wait until the agent announces
//! itself (or the VM dies, or the boot deadline passes), connect and `Check`. Stop: agent
//! `Shutdown`, wait for the hypervisor to exit, kill it after a timeout. On every error path
//! and on drop, the VM's processes are killed and its state directory is removed: nothing
//! is left behind.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use hull_protocol::READY_VSOCK_PORT;
use thiserror::Error;
use tokio::net::UnixListener;

use crate::agent::{Agent, AgentError};
use crate::backend::{BackendError, Hypervisor, LaunchSpec, VmProcesses};
use crate::util::{first_line_containing, tail_of_file};
use crate::vsock::{self, VsockError};

/// Kernel command line every hull guest gets. `reboot=t`: reboot by triple fault (no i8042
/// to wait for ~3 s); `panic=-1`: a guest panic reboots at once, which ends the VM.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 quiet";

/// Smallest guest memory hull boots with.
pub const MIN_MEMORY_MIB: u32 = 64;

/// How long [`Vm::shutdown`] still waits for the VM to exit when the Shutdown request failed
/// (the agent may have powered off before its reply left the guest).
const SHUTDOWN_REPLY_LOST_GRACE: Duration = Duration::from_secs(3);

/// How a VM is to be booted.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest kernel image.
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initrd: PathBuf,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Appended to [`BASE_CMDLINE`].
    pub extra_cmdline: String,
    /// Launch → agent ready deadline.
    pub boot_timeout: Duration,
    /// Deadline of each agent call.
    pub rpc_timeout: Duration,
    /// Parent of the VMs' state directories (`/run/hull`).
    pub state_root: PathBuf,
    /// Export `<state dir>/share` to the guest as the virtio-fs pod share.
    pub share: bool,
}

impl VmConfig {
    /// A configuration with hull's defaults for the given image.
    pub fn new(kernel: PathBuf, initrd: PathBuf) -> Self {
        VmConfig {
            kernel,
            initrd,
            vcpus: 1,
            memory_mib: 256,
            extra_cmdline: String::new(),
            boot_timeout: Duration::from_secs(30),
            rpc_timeout: Duration::from_secs(10),
            state_root: PathBuf::from(crate::DEFAULT_STATE_ROOT),
            share: false,
        }
    }

    /// The full guest kernel command line.
    pub fn cmdline(&self) -> String {
        if self.extra_cmdline.trim().is_empty() {
            BASE_CMDLINE.to_string()
        } else {
            format!("{BASE_CMDLINE} {}", self.extra_cmdline.trim())
        }
    }

    /// Checks everything that can be checked before anything is created.
    pub fn validate(&self) -> Result<(), VmError> {
        check_file("kernel", &self.kernel)?;
        check_file("initrd", &self.initrd)?;
        if self.vcpus == 0 || self.vcpus > 64 {
            return Err(VmError::InvalidConfig(format!(
                "vcpus {} is not in 1..=64",
                self.vcpus
            )));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(VmError::InvalidConfig(format!(
                "memory {} MiB is below the minimum of {MIN_MEMORY_MIB} MiB",
                self.memory_mib
            )));
        }
        Ok(())
    }
}

fn check_file(what: &'static str, path: &Path) -> Result<(), VmError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(VmError::Image {
            what,
            path: path.to_path_buf(),
            source: std::io::Error::other("not a regular file"),
        }),
        Err(source) => Err(VmError::Image {
            what,
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Errors of a VM's lifecycle.
#[derive(Debug, Error)]
pub enum VmError {
    /// The VM id cannot name a state directory.
    #[error("invalid VM id {id:?}: {reason}")]
    InvalidId {
        /// The id.
        id: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// The kernel or initrd is missing or unreadable.
    #[error("guest {what} {path}: {source}")]
    Image {
        /// `kernel` or `initrd`.
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A resource setting is out of range.
    #[error("invalid VM configuration: {0}")]
    InvalidConfig(String),
    /// A VM with this id already has a state directory.
    #[error("VM state directory {0} already exists")]
    AlreadyExists(PathBuf),
    /// Creating the state directory failed.
    #[error("creating VM state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Listening for the agent's readiness failed.
    #[error("preparing vsock: {0}")]
    Vsock(#[from] VsockError),
    /// The backend could not start the VM.
    #[error("starting the VM: {0}")]
    Launch(#[from] BackendError),
    /// The hypervisor exited before the agent was ready.
    #[error(
        "the VM exited with {status} before its agent was ready; console: {console}; {backend}"
    )]
    ExitedBeforeReady {
        /// The hypervisor's exit status.
        status: ExitStatus,
        /// Tail of the guest console.
        console: String,
        /// Tail of the backend's logs.
        backend: String,
    },
    /// The agent did not announce itself in time.
    #[error("the guest agent did not become ready within {timeout:?}; console: {console}")]
    BootTimeout {
        /// The boot deadline.
        timeout: Duration,
        /// Tail of the guest console.
        console: String,
    },
    /// Something connected to the readiness port but did not announce a hull agent.
    #[error("bad readiness announcement from the guest: {0}")]
    BadReadiness(String),
    /// Talking to the agent failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// Checks that `id` can name a directory: 1–64 of `[A-Za-z0-9_.-]`, not starting with `.`.
pub fn validate_id(id: &str) -> Result<(), VmError> {
    let reason = if id.is_empty() {
        Some("empty")
    } else if id.len() > 64 {
        Some("longer than 64 bytes")
    } else if id.starts_with('.') {
        Some("starts with '.'")
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        Some("only letters, digits, '_', '.' and '-' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(VmError::InvalidId {
            id: id.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The state directory's subdirectory that holds the VM's vsock sockets.
pub const VSOCK_DIR: &str = "vsock";

/// A VM's state directory, removed with everything in it when dropped.
#[derive(Debug)]
struct StateDir(PathBuf);

impl StateDir {
    fn create(path: PathBuf) -> Result<StateDir, VmError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| VmError::StateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        match std::fs::create_dir(&path) {
            Ok(()) => {
                let dir = StateDir(path);
                // Root's alone whatever the umask: logs, console and sockets are nobody
                // else's business. Processes confined to the pod's id get their own
                // directory below (the vsock one), reached without searching this one.
                std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700)).map_err(
                    |source| VmError::StateDir {
                        path: dir.0.clone(),
                        source,
                    },
                )?;
                Ok(dir)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(VmError::AlreadyExists(path))
            }
            Err(source) => Err(VmError::StateDir { path, source }),
        }
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        // Whatever is still mounted below (container rootfs in the share) is detached first:
        // removing the directory must never descend into a mounted filesystem.
        crate::util::unmount_all_under(&self.0);
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("removing {}: {e}", self.0.display());
            }
        }
    }
}

/// How a VM stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// The VM exited by itself once asked (even if the agent's reply was lost); the
    /// hypervisor's exit status tells a power-off from a crash.
    Clean(ExitStatus),
    /// The guest did not stop in time (or the agent did not answer) and was killed.
    Killed,
}

/// A running VM whose agent answered `Check`. Dropping it kills the VM and removes its state.
#[derive(Debug)]
pub struct Vm {
    id: String,
    // Field order is drop order: processes die before their state directory goes.
    procs: Box<dyn VmProcesses>,
    agent: Agent,
    agent_version: String,
    boot_time: Duration,
    console_log: PathBuf,
    state: StateDir,
}

impl Vm {
    /// Boots a VM with `hypervisor` and waits for its agent. See the module docs.
    pub async fn boot(
        hypervisor: &dyn Hypervisor,
        id: &str,
        cfg: &VmConfig,
    ) -> Result<Vm, VmError> {
        validate_id(id)?;
        cfg.validate()?;
        let state = StateDir::create(cfg.state_root.join(id))?;
        let share_dir = if cfg.share {
            let d = state.0.join("share");
            std::fs::create_dir(&d).map_err(|source| VmError::StateDir {
                path: d.clone(),
                source,
            })?;
            Some(d)
        } else {
            None
        };
        // The vsock sockets get a directory of their own: a confined hull-vmm is chrooted
        // into it and sees nothing else of the pod's state.
        let vsock_dir = state.0.join(VSOCK_DIR);
        std::fs::create_dir(&vsock_dir)
            .and_then(|()| {
                // Searchable by a pod's id (a chrooted hull-vmm reaches the listener in it),
                // not listable; whatever the umask.
                std::fs::set_permissions(&vsock_dir, std::fs::Permissions::from_mode(0o711))
            })
            .map_err(|source| VmError::StateDir {
                path: vsock_dir.clone(),
                source,
            })?;
        let vsock_uds = vsock_dir.join("vsock.sock");
        let ready = vsock::listen(&vsock_uds, READY_VSOCK_PORT)?;
        let spec = LaunchSpec {
            id: id.to_string(),
            state_dir: state.0.clone(),
            kernel: cfg.kernel.clone(),
            initrd: cfg.initrd.clone(),
            cmdline: cfg.cmdline(),
            vcpus: cfg.vcpus,
            memory_mib: cfg.memory_mib,
            guest_listeners: vec![vsock::guest_initiated_path(&vsock_uds, READY_VSOCK_PORT)],
            vsock_uds,
            console_log: state.0.join("console.log"),
            share_dir,
        };
        let start = Instant::now();
        let mut procs = hypervisor.launch(&spec).await?;
        log::debug!(
            "{id}: {} started, pids {:?}",
            hypervisor.name(),
            procs.pids()
        );
        // For reclaim::reclaim(), should the process that owns this VM die without stopping it.
        if let Err(e) = write_pids(&state.0, &procs.pids()) {
            procs.terminate().await;
            return Err(e);
        }

        let connected = async {
            let agent_version = wait_ready(procs.as_mut(), &ready, &spec, cfg.boot_timeout).await?;
            let agent = Agent::connect(&spec.vsock_uds, cfg.rpc_timeout).await?;
            agent.check().await?;
            Ok::<_, VmError>((agent, agent_version))
        }
        .await;
        let (agent, agent_version) = match connected {
            Ok(c) => c,
            Err(e) => {
                procs.terminate().await;
                return Err(e);
            }
        };
        let boot_time = start.elapsed();
        log::info!("{id}: agent {agent_version} ready after {boot_time:?}");
        Ok(Vm {
            id: id.to_string(),
            procs,
            agent,
            agent_version,
            boot_time,
            console_log: spec.console_log,
            state,
        })
    }

    /// The VM's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The agent connection.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// The agent version the guest announced.
    pub fn agent_version(&self) -> &str {
        &self.agent_version
    }

    /// Launch → agent `Check` answered.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The VM's state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state.0
    }

    /// The host side of the pod share, if the VM has one.
    pub fn share_dir(&self) -> Option<PathBuf> {
        let d = self.state.0.join("share");
        d.is_dir().then_some(d)
    }

    /// The guest console log.
    pub fn console_log(&self) -> &Path {
        &self.console_log
    }

    /// Host pids of the VM's processes.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.pids()
    }

    /// Asks the guest to shut down and waits up to `timeout` for the VM to exit; kills it
    /// after that. Either way every process is reaped and the state directory removed.
    ///
    /// The agent powers off right after it replied, so its reply can be lost on the way
    /// out (the vsock daemon, a separate process, may not have read it yet): once the
    /// request was sent, a VM that then exits by itself in time stopped cleanly.
    pub async fn shutdown(mut self, timeout: Duration) -> StopOutcome {
        let mut deadline = Instant::now() + timeout;
        match tokio::time::timeout(timeout, self.agent.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // A lost reply or a dead agent: a powering-off guest is gone within
                // moments, so a dead one is not waited for the whole timeout.
                log::info!(
                    "{}: Shutdown: {e}; waiting briefly for the VM to exit",
                    self.id
                );
                deadline = deadline.min(Instant::now() + SHUTDOWN_REPLY_LOST_GRACE);
            }
            Err(_) => log::warn!("{}: agent Shutdown timed out", self.id),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let outcome = match tokio::time::timeout(left, self.procs.wait()).await {
            Ok(Ok(status)) => StopOutcome::Clean(status),
            Ok(Err(e)) => {
                log::warn!("{}: {e}", self.id);
                StopOutcome::Killed
            }
            Err(_) => {
                log::warn!(
                    "{}: the VM did not exit within {timeout:?}; killing it",
                    self.id
                );
                StopOutcome::Killed
            }
        };
        self.procs.terminate().await;
        outcome
    }

    /// Kills the VM at once; every process is reaped and the state directory removed.
    pub async fn kill(mut self) {
        self.procs.terminate().await;
    }
}

/// What an error message shows of the guest console: the kernel's panic line, if there is
/// one (it scrolls away under the stack trace that follows it), then the last lines.
fn console_summary(console_log: &Path) -> String {
    let tail = tail_of_file(console_log, 8);
    match first_line_containing(console_log, "Kernel panic") {
        Some(panic) if !tail.contains(&panic) => format!("{panic} ... {tail}"),
        _ => tail,
    }
}

fn write_pids(state_dir: &Path, pids: &[u32]) -> Result<(), VmError> {
    let text: String = pids.iter().map(|p| format!("{p}\n")).collect();
    let path = state_dir.join(crate::reclaim::PIDS_FILE);
    std::fs::write(&path, text).map_err(|source| VmError::StateDir { path, source })
}

/// Waits for the agent's readiness line on `ready`; fails early if the VM exits.
async fn wait_ready(
    procs: &mut dyn VmProcesses,
    ready: &UnixListener,
    spec: &LaunchSpec,
    timeout: Duration,
) -> Result<String, VmError> {
    let announce = async {
        let (mut conn, _) = ready
            .accept()
            .await
            .map_err(|e| VmError::BadReadiness(format!("accepting: {e}")))?;
        // The guest writes the line right after connecting; the bound is for a starved host.
        let line = tokio::time::timeout(Duration::from_secs(10), vsock::read_line(&mut conn))
            .await
            .map_err(|_| VmError::BadReadiness("no line within 10 s".into()))?
            .map_err(|e| VmError::BadReadiness(e.to_string()))?
            .map_err(|e| VmError::BadReadiness(e.to_string()))?;
        vsock::parse_ready_line(&line)
            .map(str::to_string)
            .map_err(VmError::BadReadiness)
    };
    tokio::select! {
        r = announce => r,
        status = procs.wait() => {
            let status = status?;
            Err(VmError::ExitedBeforeReady {
                status,
                console: console_summary(&spec.console_log),
                backend: procs.diagnostics(),
            })
        }
        _ = tokio::time::sleep(timeout) => Err(VmError::BootTimeout {
            timeout,
            console: console_summary(&spec.console_log),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_cannot_name_a_directory_are_rejected() {
        for ok in ["a", "pod-1", "x_y.z", &"a".repeat(64)] {
            validate_id(ok).unwrap();
        }
        for bad in ["", ".", "..", "../etc", "a/b", "a b", &"a".repeat(65), "é"] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cmdline_appends_extras_to_the_base() {
        let mut c = VmConfig::new("/k".into(), "/i".into());
        assert_eq!(c.cmdline(), BASE_CMDLINE);
        c.extra_cmdline = " hull_log=debug ".into();
        assert_eq!(c.cmdline(), format!("{BASE_CMDLINE} hull_log=debug"));
    }

    #[test]
    fn missing_images_and_bad_resources_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("vmlinux");
        std::fs::write(&k, b"k").unwrap();
        let c = VmConfig::new(dir.path().join("nope"), k.clone());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("kernel") && e.contains("nope"), "{e}");

        let c = VmConfig::new(k.clone(), dir.path().to_path_buf());
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("initrd") && e.contains("not a regular file"),
            "{e}"
        );

        let mut c = VmConfig::new(k.clone(), k.clone());
        c.memory_mib = 16;
        assert!(c.validate().unwrap_err().to_string().contains("16 MiB"));
        c.memory_mib = 128;
        c.vcpus = 0;
        assert!(c.validate().unwrap_err().to_string().contains("vcpus 0"));
    }

    #[test]
    fn state_dir_is_exclusive_and_removed_on_drop() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path().join("vm1");
        let d = StateDir::create(p.clone()).unwrap();
        std::fs::write(p.join("file"), b"x").unwrap();
        assert!(matches!(
            StateDir::create(p.clone()),
            Err(VmError::AlreadyExists(_))
        ));
        drop(d);
        assert!(!p.exists());
    }
}
