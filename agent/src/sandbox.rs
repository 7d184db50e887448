//! The pod sandbox inside the guest and its OCI containers, run by youki's libcontainer.
//!
//! Every container has its own entry (own locks); there is no sandbox-wide lock held across
//! blocking work. libcontainer calls are blocking and fork, so they run on blocking threads
//! under the reaper's fork lock (see [`crate::reaper`]). Paths from the host (rootfs) are
//! resolved strictly inside the share root.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libcontainer::container::{Container, ContainerStatus};
use oci_spec::runtime::{LinuxResources, Process as OciProcess, Spec};
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::reaper::{Exit, Reaper};
use crate::stdio;
use crate::streams::{StreamError, StreamRegistry};

/// How long a request waits for the stdio streams it names.
const STREAM_WAIT: Duration = Duration::from_secs(10);
/// After a process exits, how long its output may still take to drain (a background child
/// can hold the pipe open; then the rest is cut off and logged).
const OUTPUT_DRAIN: Duration = Duration::from_secs(10);

/// Errors of sandbox and container operations. Each maps to one ttrpc code.
#[derive(Debug, Error)]
pub enum SandboxError {
    /// A request field is invalid; the message names the field.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// No such container or process.
    #[error("{0} not found")]
    NotFound(String),
    /// The id is taken.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The object is in the wrong state for the request.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A stdio stream problem.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// libcontainer failed.
    #[error("{op} container {id}: {source}")]
    Runtime {
        /// The operation.
        op: &'static str,
        /// The container.
        id: String,
        /// The underlying error.
        source: Box<libcontainer::error::LibcontainerError>,
    },
    /// Building a container process failed (in the build helper).
    #[error("{op} container {id}: {message}")]
    Build {
        /// The operation.
        op: &'static str,
        /// The container.
        id: String,
        /// Which kind of failure.
        failure: crate::build::Failure,
        /// libcontainer's message, or what went wrong with the helper.
        message: String,
    },
    /// cgroup access failed.
    #[error("cgroup of container {id}: {reason}")]
    Cgroup {
        /// The container.
        id: String,
        /// What failed.
        reason: String,
    },
    /// A host-side I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl SandboxError {
    /// The ttrpc code for this error.
    pub fn code(&self) -> ttrpc::Code {
        use libcontainer::error::LibcontainerError as L;
        match self {
            SandboxError::InvalidArgument { .. } => ttrpc::Code::INVALID_ARGUMENT,
            SandboxError::NotFound(_) => ttrpc::Code::NOT_FOUND,
            SandboxError::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
            SandboxError::FailedPrecondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            SandboxError::Stream(StreamError::Missing(..)) => ttrpc::Code::DEADLINE_EXCEEDED,
            SandboxError::Stream(_) => ttrpc::Code::INVALID_ARGUMENT,
            SandboxError::Runtime { source, .. } if matches!(**source, L::IncorrectStatus(_)) => {
                ttrpc::Code::FAILED_PRECONDITION
            }
            SandboxError::Runtime { source, .. }
                if matches!(**source, L::InvalidInput(_) | L::InvalidID(_)) =>
            {
                ttrpc::Code::INVALID_ARGUMENT
            }
            SandboxError::Build { failure, .. } => match failure {
                crate::build::Failure::Invalid => ttrpc::Code::INVALID_ARGUMENT,
                crate::build::Failure::Precondition => ttrpc::Code::FAILED_PRECONDITION,
                crate::build::Failure::Internal => ttrpc::Code::INTERNAL,
            },
            SandboxError::Runtime { .. }
            | SandboxError::Cgroup { .. }
            | SandboxError::Io { .. } => ttrpc::Code::INTERNAL,
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> SandboxError {
    SandboxError::InvalidArgument {
        field,
        reason: reason.into(),
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Io { what, source }
}

/// Checks a container or exec id: 1–64 of `[A-Za-z0-9_.+-]`, not `.`/`..`.
pub fn validate_id(field: &'static str, id: &str) -> Result<(), SandboxError> {
    if id.is_empty() || id.len() > 64 || id == "." || id == ".." {
        return Err(invalid(field, format!("{id:?} must be 1-64 characters")));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.+-".contains(&b))
    {
        return Err(invalid(
            field,
            format!("{id:?} may only contain letters, digits, '_', '.', '+', '-'"),
        ));
    }
    Ok(())
}

/// Resolves `rel` (from the host) inside `root`: relative, no `..`, no empty path.
pub fn resolve_in(root: &Path, rel: &str) -> Result<PathBuf, SandboxError> {
    let p = Path::new(rel);
    if rel.is_empty() {
        return Err(invalid("rootfs", "empty path"));
    }
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(invalid(
            "rootfs",
            format!("{rel:?} must be a relative path without '..'"),
        ));
    }
    Ok(root.join(p))
}

/// Creates the process's working directory inside `rootfs` if it is missing, as runc does
/// (libcontainer only `chdir`s, so a missing cwd fails the container's start). Mode 0755,
/// owned by root, like runc's. Never follows a symlink: at the first component that is not a
/// plain directory it stops and leaves the path to the runtime, so nothing is created
/// outside the rootfs.
pub fn ensure_cwd(rootfs: &Path, cwd: &Path) -> Result<(), SandboxError> {
    use nix::errno::Errno;
    use nix::fcntl::{open, openat, OFlag};
    use nix::sys::stat::{mkdirat, Mode};
    if cwd.as_os_str().is_empty() {
        return Ok(()); // libcontainer then stays in the root
    }
    if !cwd.is_absolute() {
        return Err(invalid(
            "spec_json.process.cwd",
            format!("{} must be an absolute path", cwd.display()),
        ));
    }
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_PATH;
    let mut dir = open(rootfs, flags, Mode::empty())
        .map_err(|e| io_err(format!("opening {}", rootfs.display()))(e.into()))?;
    for c in cwd.components() {
        let name = match c {
            Component::Normal(n) => n,
            Component::RootDir | Component::CurDir => continue,
            // `..` is left to the runtime, which resolves it inside the rootfs.
            Component::ParentDir | Component::Prefix(_) => return Ok(()),
        };
        dir = match openat(&dir, name, flags, Mode::empty()) {
            Ok(d) => d,
            Err(Errno::ENOENT) => {
                match mkdirat(&dir, name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => {
                        return Err(io_err(format!("creating the cwd {}", cwd.display()))(
                            e.into(),
                        ))
                    }
                }
                match openat(&dir, name, flags, Mode::empty()) {
                    Ok(d) => d,
                    Err(_) => return Ok(()),
                }
            }
            // A symlink (ELOOP) or a non-directory: not ours to resolve.
            Err(_) => return Ok(()),
        };
    }
    Ok(())
}

/// One process: the container's init or an exec.
#[derive(Debug)]
pub struct Process {
    /// Agent-side pid.
    pub pid: i32,
    /// Set once the process exited and its output drained.
    done: watch::Receiver<Option<Exit>>,
    /// Aborting it closes stdin.
    stdin: Mutex<Option<JoinHandle<()>>>,
    /// The pty master, for processes with a terminal.
    tty: Option<OwnedFd>,
}

impl Process {
    /// Waits until the process exited and all its output was delivered.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.done.clone();
        loop {
            if let Some(exit) = *rx.borrow_and_update() {
                return exit;
            }
            if rx.changed().await.is_err() {
                // The finisher is gone without a result: cannot happen unless the runtime
                // shuts down; report the process as killed.
                return Exit {
                    status: 137,
                    signal: 9,
                };
            }
        }
    }

    fn exited(&self) -> bool {
        self.done.borrow().is_some()
    }
}

/// One container.
#[derive(Debug)]
pub struct ContainerEntry {
    id: String,
    bundle: PathBuf,
    cgroup: PathBuf,
    state: Mutex<Container>,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    oom_watch: JoinHandle<()>,
}

/// Where the sandbox keeps things.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where container rootfs paths are resolved (the pod share).
    pub share_root: PathBuf,
    /// libcontainer's state and the bundles.
    pub state_root: PathBuf,
    /// The agent is PID 1 on an initramfs: pivot_root is impossible there, so containers
    /// switch root with MS_MOVE + chroot instead.
    pub no_pivot: bool,
    /// The agent owns the machine (PID 1): it may set the hostname and write /etc files.
    pub owns_machine: bool,
}

/// The sandbox: its containers and the machinery they share.
#[derive(Debug)]
pub struct Sandbox {
    cfg: SandboxConfig,
    reaper: Arc<Reaper>,
    streams: Arc<StreamRegistry>,
    containers: Mutex<HashMap<String, Arc<ContainerEntry>>>,
    oom_tx: mpsc::Sender<String>,
    oom_rx: tokio::sync::Mutex<mpsc::Receiver<String>>,
}

/// The cgroup counter of OOM kills, v2 (`memory.events`) or v1 (`memory.oom_control`).
pub fn oom_kills(cgroup: &Path) -> Option<u64> {
    let rel = cgroup.strip_prefix("/").unwrap_or(cgroup);
    let candidates = [
        Path::new("/sys/fs/cgroup").join(rel).join("memory.events"),
        Path::new("/sys/fs/cgroup/memory")
            .join(rel)
            .join("memory.oom_control"),
    ];
    candidates.iter().find_map(|p| {
        let text = std::fs::read_to_string(p).ok()?;
        parse_counter(&text, "oom_kill")
    })
}

/// Reads `key N` from a flat-keyed cgroup file.
pub fn parse_counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

impl Sandbox {
    /// A sandbox with no containers.
    pub fn new(
        cfg: SandboxConfig,
        reaper: Arc<Reaper>,
        streams: Arc<StreamRegistry>,
    ) -> Arc<Sandbox> {
        let (oom_tx, oom_rx) = mpsc::channel(64);
        Arc::new(Sandbox {
            cfg,
            reaper,
            streams,
            containers: Mutex::new(HashMap::new()),
            oom_tx,
            oom_rx: tokio::sync::Mutex::new(oom_rx),
        })
    }

    fn get(&self, id: &str) -> Result<Arc<ContainerEntry>, SandboxError> {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| SandboxError::NotFound(format!("container {id:?}")))
    }

    fn process(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<(Arc<ContainerEntry>, Arc<Process>), SandboxError> {
        let c = self.get(id)?;
        if exec_id.is_empty() {
            let p = c.init.clone();
            return Ok((c, p));
        }
        let p = c
            .execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| {
                SandboxError::NotFound(format!("process {exec_id:?} of container {id:?}"))
            })?;
        Ok((c, p))
    }

    /// Applies the sandbox settings. Hostname and /etc files only when the agent owns the
    /// machine; the share is mounted when a tag is given.
    pub fn setup(
        &self,
        hostname: &str,
        resolv_conf: &str,
        hosts: &str,
        share_tag: &str,
    ) -> Result<(), SandboxError> {
        if !self.cfg.owns_machine {
            if !share_tag.is_empty() {
                return Err(invalid(
                    "share_tag",
                    "host-mode agents use --share-dir, not a virtio-fs tag",
                ));
            }
            return Ok(());
        }
        if !hostname.is_empty() {
            nix::unistd::sethostname(hostname).map_err(|e| invalid("hostname", e.to_string()))?;
        }
        for (content, path) in [(resolv_conf, "/etc/resolv.conf"), (hosts, "/etc/hosts")] {
            if !content.is_empty() {
                std::fs::write(path, content).map_err(io_err(format!("writing {path}")))?;
            }
        }
        if !share_tag.is_empty() {
            std::fs::create_dir_all(&self.cfg.share_root)
                .map_err(io_err("creating the share root"))?;
            nix::mount::mount(
                Some(share_tag),
                &self.cfg.share_root,
                Some("virtiofs"),
                nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                None::<&str>,
            )
            .map_err(|e| {
                invalid(
                    "share_tag",
                    format!("mounting virtio-fs {share_tag:?}: {e}"),
                )
            })?;
        }
        Ok(())
    }

    /// Creates a container (OCI "created").
    pub async fn create(
        self: &Arc<Self>,
        id: &str,
        spec_json: &[u8],
        rootfs: &str,
        streams: [&str; 3],
    ) -> Result<u32, SandboxError> {
        validate_id("container_id", id)?;
        let mut spec: Spec =
            serde_json::from_slice(spec_json).map_err(|e| invalid("spec_json", e.to_string()))?;
        let rootfs = resolve_in(&self.cfg.share_root, rootfs)?;
        if !rootfs.is_dir() {
            return Err(invalid(
                "rootfs",
                format!("{} is not a directory", rootfs.display()),
            ));
        }
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        if terminal && !streams[2].is_empty() {
            return Err(invalid(
                "stdio.stderr",
                "must be empty with a terminal (output goes to stdout)",
            ));
        }
        if let Some(p) = spec.process() {
            ensure_cwd(&rootfs, p.cwd())?;
        }
        let mut root = spec.root().clone().unwrap_or_default();
        root.set_path(rootfs);
        spec.set_root(Some(root));
        // A container without a cgroup path gets one under hull's own subtree.
        let mut linux = spec.linux().clone().unwrap_or_default();
        let cgroup = match linux.cgroups_path() {
            Some(p) => p.clone(),
            None => {
                let p = PathBuf::from(format!("/hull/{id}"));
                linux.set_cgroups_path(Some(p.clone()));
                p
            }
        };
        spec.set_linux(Some(linux));

        // Reserve the id before any side effect, so a concurrent duplicate fails cleanly.
        let bundle = self.cfg.state_root.join("bundles").join(id);
        {
            let map = self.containers.lock().unwrap_or_else(|e| e.into_inner());
            if map.contains_key(id) || bundle.exists() {
                return Err(SandboxError::AlreadyExists(format!("container {id:?}")));
            }
        }
        std::fs::create_dir_all(&bundle)
            .map_err(io_err(format!("creating {}", bundle.display())))?;
        let result = self
            .create_in_bundle(id, &spec, &bundle, &cgroup, terminal, streams)
            .await;
        match result {
            Ok(entry) => {
                let pid = entry.init.pid;
                self.containers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.to_string(), entry);
                Ok(pid as u32)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&bundle);
                Err(e)
            }
        }
    }

    async fn create_in_bundle(
        self: &Arc<Self>,
        id: &str,
        spec: &Spec,
        bundle: &Path,
        cgroup: &Path,
        terminal: bool,
        streams: [&str; 3],
    ) -> Result<Arc<ContainerEntry>, SandboxError> {
        spec.save(bundle.join("config.json"))
            .map_err(|e| invalid("spec_json", format!("cannot be saved as config.json: {e}")))?;
        let (stdin, stdout, stderr) = (
            self.streams.claim_opt(streams[0], STREAM_WAIT).await?,
            self.streams.claim_opt(streams[1], STREAM_WAIT).await?,
            self.streams.claim_opt(streams[2], STREAM_WAIT).await?,
        );
        let state_root = self.cfg.state_root.join("containers");
        std::fs::create_dir_all(&state_root)
            .map_err(io_err("creating the container state root"))?;

        let (pending, child_fds, console_path) =
            PendingStdio::prepare(terminal, bundle.join("console.sock"), stdin, stdout, stderr)?;

        let req = crate::build::Request {
            id: id.to_string(),
            state_root: state_root.clone(),
            console_socket: console_path,
            piped_stdio: child_fds.is_some(),
            kind: crate::build::Kind::Init {
                bundle: bundle.to_path_buf(),
                no_pivot: self.cfg.no_pivot,
            },
            reply: self.reply_path(),
        };
        let reaper = self.reaper.clone();
        let built = tokio::task::spawn_blocking(move || {
            let held = reaper.fork_lock();
            let pid = build_process("create", &req, child_fds)?;
            let exit = reaper.register(&held, pid);
            // The helper is gone; libcontainer's state on disk is the container. Without
            // it the process could never be started or deleted: it goes.
            let container = Container::load(req.state_root.join(&req.id)).map_err(|source| {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                crate::build::abandon(&req);
                SandboxError::Runtime {
                    op: "create",
                    id: req.id.clone(),
                    source: Box::new(source),
                }
            })?;
            Ok::<_, SandboxError>((container, pid, exit))
        })
        .await
        .map_err(|e| SandboxError::FailedPrecondition(format!("create task failed: {e}")))?;
        let (container, pid, exit) = match built {
            Ok(b) => b,
            Err(e) => {
                pending.abandon();
                return Err(e);
            }
        };
        let Wired { output, input, tty } = pending.finish()?;
        let process = finish_process(pid, exit, output, input, tty);
        let oom_watch = tokio::spawn(watch_oom(
            id.to_string(),
            cgroup.to_path_buf(),
            self.oom_tx.clone(),
            process.clone(),
        ));
        Ok(Arc::new(ContainerEntry {
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            cgroup: cgroup.to_path_buf(),
            state: Mutex::new(container),
            init: process,
            execs: Mutex::new(HashMap::new()),
            oom_watch,
        }))
    }

    /// A fresh path for a build helper's reply.
    fn reply_path(&self) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.cfg.state_root.join(format!("build-{n}.reply"))
    }

    /// Runs a blocking libcontainer operation on a container under the fork lock.
    async fn with_container<T: Send + 'static>(
        &self,
        id: &str,
        op: &'static str,
        f: impl FnOnce(&mut Container) -> Result<T, libcontainer::error::LibcontainerError>
            + Send
            + 'static,
    ) -> Result<T, SandboxError> {
        let c = self.get(id)?;
        let reaper = self.reaper.clone();
        let idc = id.to_string();
        tokio::task::spawn_blocking(move || {
            let _held = reaper.fork_lock();
            let mut state = c.state.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut state).map_err(|source| SandboxError::Runtime {
                op,
                id: idc,
                source: Box::new(source),
            })
        })
        .await
        .map_err(|e| SandboxError::FailedPrecondition(format!("{op} task failed: {e}")))?
    }

    /// Starts the container's program.
    pub async fn start(&self, id: &str) -> Result<(), SandboxError> {
        self.with_container(id, "start", |c| c.start()).await
    }

    /// Starts an exec process.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &[u8],
        streams: [&str; 3],
    ) -> Result<u32, SandboxError> {
        validate_id("exec_id", exec_id)?;
        let c = self.get(id)?;
        let process: OciProcess = serde_json::from_slice(process_json)
            .map_err(|e| invalid("process_json", e.to_string()))?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(invalid("process_json", "args must not be empty"));
        }
        let terminal = process.terminal().unwrap_or(false);
        if terminal && !streams[2].is_empty() {
            return Err(invalid(
                "stdio.stderr",
                "must be empty with a terminal (output goes to stdout)",
            ));
        }
        if c.init.exited() {
            return Err(SandboxError::FailedPrecondition(format!(
                "container {id:?} is not running"
            )));
        }
        let path = c.bundle.join(format!("exec-{exec_id}.json"));
        {
            let execs = c.execs.lock().unwrap_or_else(|e| e.into_inner());
            if execs.contains_key(exec_id) {
                return Err(SandboxError::AlreadyExists(format!(
                    "process {exec_id:?} of container {id:?}"
                )));
            }
        }
        std::fs::write(&path, process_json)
            .map_err(io_err(format!("writing {}", path.display())))?;
        let (stdin, stdout, stderr) = (
            self.streams.claim_opt(streams[0], STREAM_WAIT).await?,
            self.streams.claim_opt(streams[1], STREAM_WAIT).await?,
            self.streams.claim_opt(streams[2], STREAM_WAIT).await?,
        );
        // Short: a socket path has at most 107 bytes, exec ids up to 64.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (pending, child_fds, console_path) = PendingStdio::prepare(
            terminal,
            c.bundle.join(format!("tty{n}.sock")),
            stdin,
            stdout,
            stderr,
        )?;
        let req = crate::build::Request {
            id: id.to_string(),
            state_root: self.cfg.state_root.join("containers"),
            console_socket: console_path,
            piped_stdio: child_fds.is_some(),
            kind: crate::build::Kind::Tenant {
                process: path.clone(),
            },
            reply: self.reply_path(),
        };
        let reaper = self.reaper.clone();
        let built = tokio::task::spawn_blocking(move || {
            let held = reaper.fork_lock();
            let pid = build_process("exec in", &req, child_fds)?;
            Ok::<_, SandboxError>((pid, reaper.register(&held, pid)))
        })
        .await
        .map_err(|e| SandboxError::FailedPrecondition(format!("exec task failed: {e}")))?;
        let _ = std::fs::remove_file(&path);
        let (pid, exit) = match built {
            Ok(b) => b,
            Err(e) => {
                pending.abandon();
                return Err(e);
            }
        };
        let Wired { output, input, tty } = pending.finish()?;
        let p = finish_process(pid, exit, output, input, tty);
        c.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(exec_id.to_string(), p);
        Ok(pid as u32)
    }

    /// Waits for a process (see [`Process::wait`]); adds the OOM flag.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<(Exit, bool), SandboxError> {
        let (c, p) = self.process(id, exec_id)?;
        let exit = p.wait().await;
        let oom = oom_kills(&c.cgroup).unwrap_or(0) > 0;
        Ok((exit, oom))
    }

    /// Signals one process or all of the container's.
    pub async fn signal(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), SandboxError> {
        let sig = nix::sys::signal::Signal::try_from(signal as i32)
            .map_err(|_| invalid("signal", format!("{signal} is not a signal")))?;
        if all && !exec_id.is_empty() {
            return Err(invalid("all", "cannot be combined with an exec_id"));
        }
        let (_, p) = self.process(id, exec_id)?;
        if exec_id.is_empty() {
            let libsig = libcontainer::signal::Signal::try_from(signal as i32)
                .map_err(|_| invalid("signal", format!("{signal} is not a signal")))?;
            if p.exited() && !all {
                return Err(SandboxError::FailedPrecondition(format!(
                    "container {id:?} is not running"
                )));
            }
            return self
                .with_container(id, "signal", move |c| c.kill(libsig, all))
                .await;
        }
        if p.exited() {
            return Err(SandboxError::FailedPrecondition(format!(
                "process {exec_id:?} has exited"
            )));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), sig).map_err(|e| {
            SandboxError::FailedPrecondition(format!("signalling process {exec_id:?}: {e}"))
        })
    }

    /// Closes a process's stdin.
    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), SandboxError> {
        let (_, p) = self.process(id, exec_id)?;
        if let Some(h) = p.stdin.lock().unwrap_or_else(|e| e.into_inner()).take() {
            h.abort();
        }
        Ok(())
    }

    /// Resizes a process's terminal.
    pub fn resize(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), SandboxError> {
        let (_, p) = self.process(id, exec_id)?;
        let master = p.tty.as_ref().ok_or_else(|| {
            SandboxError::FailedPrecondition("the process has no terminal".into())
        })?;
        let rows = u16::try_from(rows).map_err(|_| invalid("rows", "too large"))?;
        let cols = u16::try_from(cols).map_err(|_| invalid("cols", "too large"))?;
        stdio::resize(master, rows, cols).map_err(io_err("resizing the terminal"))
    }

    fn cgroup_manager(
        &self,
        c: &ContainerEntry,
    ) -> Result<libcgroups::common::AnyCgroupManager, SandboxError> {
        libcgroups::common::create_cgroup_manager(libcgroups::common::CgroupConfig {
            cgroup_path: c.cgroup.clone(),
            systemd_cgroup: false,
            container_name: c.id.clone(),
        })
        .map_err(|e| SandboxError::Cgroup {
            id: c.id.clone(),
            reason: e.to_string(),
        })
    }

    /// Pids in the container's cgroup.
    pub fn pids(&self, id: &str) -> Result<Vec<u32>, SandboxError> {
        use libcgroups::common::CgroupManager;
        let c = self.get(id)?;
        let m = self.cgroup_manager(&c)?;
        let pids = m.get_all_pids().map_err(|e| SandboxError::Cgroup {
            id: id.into(),
            reason: e.to_string(),
        })?;
        Ok(pids.into_iter().map(|p| p.as_raw() as u32).collect())
    }

    /// Freezes or thaws the container.
    pub async fn pause(&self, id: &str, pause: bool) -> Result<(), SandboxError> {
        if pause {
            self.with_container(id, "pause", |c| c.pause()).await
        } else {
            self.with_container(id, "resume", |c| c.resume()).await
        }
    }

    /// Applies new cgroup limits.
    pub fn update(&self, id: &str, resources_json: &[u8]) -> Result<(), SandboxError> {
        use libcgroups::common::{CgroupManager, ControllerOpt};
        let resources: LinuxResources = serde_json::from_slice(resources_json)
            .map_err(|e| invalid("resources_json", e.to_string()))?;
        let c = self.get(id)?;
        let m = self.cgroup_manager(&c)?;
        m.apply(&ControllerOpt {
            resources: &resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(|e| SandboxError::Cgroup {
            id: id.into(),
            reason: e.to_string(),
        })
    }

    /// cgroup statistics; whether the cgroup is v1 (libcgroups reports CPU time in ns
    /// there, µs on v2); the OOM-kill count.
    pub fn stats(&self, id: &str) -> Result<(libcgroups::stats::Stats, bool, u64), SandboxError> {
        use libcgroups::common::{AnyCgroupManager, CgroupManager};
        let c = self.get(id)?;
        let m = self.cgroup_manager(&c)?;
        let v1 = matches!(m, AnyCgroupManager::V1(_));
        let stats = m.stats().map_err(|e| SandboxError::Cgroup {
            id: id.into(),
            reason: e.to_string(),
        })?;
        Ok((stats, v1, oom_kills(&c.cgroup).unwrap_or(0)))
    }

    /// The next OOM kill in any container.
    pub async fn next_oom(&self) -> Option<String> {
        self.oom_rx.lock().await.recv().await
    }

    /// Deletes a stopped container.
    pub async fn remove(&self, id: &str) -> Result<(), SandboxError> {
        let c = self.get(id)?;
        if !c.init.exited() {
            return Err(SandboxError::FailedPrecondition(format!(
                "container {id:?} is still running"
            )));
        }
        self.with_container(id, "delete", |c| c.delete(true))
            .await?;
        c.oom_watch.abort();
        let _ = std::fs::remove_dir_all(&c.bundle);
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        Ok(())
    }

    /// Kills and removes every container.
    pub async fn destroy(&self) -> Result<(), SandboxError> {
        let ids: Vec<String> = self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for id in ids {
            let c = self.get(&id)?;
            if !c.init.exited() {
                let sig = sigkill();
                if let Err(e) = self
                    .with_container(&id, "kill", move |c| c.kill(sig, true))
                    .await
                {
                    log::warn!("{e}");
                }
                let _ = tokio::time::timeout(Duration::from_secs(10), c.init.wait()).await;
            }
            self.remove(&id).await?;
        }
        Ok(())
    }

    /// Whether the container's status is `created` (for tests and logs).
    pub fn status(&self, id: &str) -> Result<ContainerStatus, SandboxError> {
        let c = self.get(id)?;
        let mut s = c.state.lock().unwrap_or_else(|e| e.into_inner());
        let _ = s.refresh_status();
        Ok(s.status())
    }
}

/// SIGKILL as libcontainer's (nix 0.29) signal type.
fn sigkill() -> libcontainer::signal::Signal {
    libcontainer::signal::Signal::try_from(9).unwrap_or_else(|_| unreachable!("9 is SIGKILL"))
}

/// A new process's stdio between "streams claimed" and "process running": pipes whose
/// copiers already run, or (with a terminal) a console socket on which libcontainer will
/// hand over the pty master.
struct PendingStdio {
    output: Vec<JoinHandle<()>>,
    input: Option<JoinHandle<()>>,
    tty: Option<PendingTty>,
}

struct PendingTty {
    stdin: Option<crate::streams::Stream>,
    stdout: Option<crate::streams::Stream>,
    socket: PathBuf,
    master: std::thread::JoinHandle<std::io::Result<OwnedFd>>,
}

/// What [`PendingStdio::prepare`] gives: the pending stdio, the process's fds (pipes) and
/// the console socket path (terminal).
type Prepared = (PendingStdio, Option<[OwnedFd; 3]>, Option<PathBuf>);

/// The agent side of a running process's stdio.
struct Wired {
    output: Vec<JoinHandle<()>>,
    input: Option<JoinHandle<()>>,
    tty: Option<OwnedFd>,
}

/// Builds a process in a helper (see [`crate::build`]); its pid, or the error naming `op`
/// and the container. The caller holds the fork lock.
fn build_process(
    op: &'static str,
    req: &crate::build::Request,
    stdio: Option<[OwnedFd; 3]>,
) -> Result<i32, SandboxError> {
    use crate::build::{Failure, Reply};
    match crate::build::run(req, stdio) {
        Ok(Reply::Built(pid)) => Ok(pid),
        Ok(Reply::Failed(failure, message)) => Err(SandboxError::Build {
            op,
            id: req.id.clone(),
            failure,
            message,
        }),
        Err(e) => Err(SandboxError::Build {
            op,
            id: req.id.clone(),
            failure: Failure::Internal,
            message: e.to_string(),
        }),
    }
}

impl PendingStdio {
    /// Prepares stdio. Returns it, the fds for the process (without a terminal) and the
    /// console socket to give libcontainer (with one).
    fn prepare(
        terminal: bool,
        console_socket: PathBuf,
        stdin: Option<crate::streams::Stream>,
        stdout: Option<crate::streams::Stream>,
        stderr: Option<crate::streams::Stream>,
    ) -> Result<Prepared, SandboxError> {
        if !terminal {
            let w = stdio::pipes(stdin, stdout, stderr).map_err(io_err("creating stdio pipes"))?;
            let pending = PendingStdio {
                output: w.output,
                input: w.input,
                tty: None,
            };
            return Ok((pending, Some(w.child), None));
        }
        let l = std::os::unix::net::UnixListener::bind(&console_socket)
            .map_err(io_err("binding the console socket"))?;
        let master = std::thread::spawn(move || receive_pty_master(&l));
        let tty = PendingTty {
            stdin,
            stdout,
            socket: console_socket.clone(),
            master,
        };
        let pending = PendingStdio {
            output: vec![],
            input: None,
            tty: Some(tty),
        };
        Ok((pending, None, Some(console_socket)))
    }

    /// After the process was created: wires the terminal, if any.
    fn finish(self) -> Result<Wired, SandboxError> {
        let Some(t) = self.tty else {
            return Ok(Wired {
                output: self.output,
                input: self.input,
                tty: None,
            });
        };
        let master = t
            .master
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("console thread panicked")));
        let _ = std::fs::remove_file(&t.socket);
        let master = master.map_err(io_err("receiving the pty master"))?;
        let w =
            stdio::terminal(master, t.stdin, t.stdout).map_err(io_err("wiring the terminal"))?;
        Ok(Wired {
            output: w.output,
            input: w.input,
            tty: Some(w.master),
        })
    }

    /// After a failed creation: nobody will connect to the console socket, so wake the
    /// thread waiting on it; copiers end with their streams.
    fn abandon(self) {
        if let Some(t) = self.tty {
            let _ = std::os::unix::net::UnixStream::connect(&t.socket);
            let _ = t.master.join();
            let _ = std::fs::remove_file(&t.socket);
        }
        for h in self.output {
            h.abort();
        }
        if let Some(h) = self.input {
            h.abort();
        }
    }
}

/// Waits for the exit, then for the output to drain, then publishes the exit.
fn finish_process(
    pid: i32,
    mut exit: crate::reaper::ExitReceiver,
    output: Vec<JoinHandle<()>>,
    input: Option<JoinHandle<()>>,
    tty: Option<OwnedFd>,
) -> Arc<Process> {
    let (done_tx, done_rx) = watch::channel(None);
    let stdin = Mutex::new(input);
    tokio::spawn(async move {
        let status = loop {
            if let Some(e) = *exit.borrow_and_update() {
                break e;
            }
            if exit.changed().await.is_err() {
                break Exit {
                    status: 137,
                    signal: 9,
                };
            }
        };
        for h in output {
            let abort = h.abort_handle();
            if tokio::time::timeout(OUTPUT_DRAIN, h).await.is_err() {
                log::warn!(
                    "process {pid}: output still open {OUTPUT_DRAIN:?} after exit; cutting it off"
                );
                abort.abort();
            }
        }
        done_tx.send_replace(Some(status));
    });
    Arc::new(Process {
        pid,
        done: done_rx,
        stdin,
        tty,
    })
}

/// Polls the container's OOM-kill counter and reports increases, with a last look once the
/// init process has exited: an OOM kill usually ends the container at once, often before
/// the next poll, and the container may be removed right after.
async fn watch_oom(id: String, cgroup: PathBuf, tx: mpsc::Sender<String>, init: Arc<Process>) {
    let mut seen = 0;
    let mut report = |now: u64| {
        let fresh = now > seen;
        seen = seen.max(now);
        fresh
    };
    let mut exited = std::pin::pin!(init.wait());
    loop {
        let last = tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => false,
            _ = &mut exited => true,
        };
        if report(oom_kills(&cgroup).unwrap_or(0)) {
            log::info!("container {id}: OOM kill");
            if tx.send(id.clone()).await.is_err() {
                return;
            }
        }
        if last {
            return;
        }
    }
}

/// Accepts libcontainer's connection on the console socket and receives the pty master.
fn receive_pty_master(listener: &std::os::unix::net::UnixListener) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd};
    let (conn, _) = listener.accept()?;
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this fd in our table via SCM_RIGHTS; we
                // are its only owner.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(std::io::Error::other("no fd on the console socket"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        validate_id("container_id", "web-1.a_b+c").unwrap();
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65)] {
            let e = validate_id("container_id", bad).unwrap_err();
            assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
            assert!(e.to_string().contains("container_id"));
        }
    }

    #[test]
    fn rootfs_paths_stay_inside_the_share() {
        let root = Path::new("/share");
        assert_eq!(
            resolve_in(root, "c1/rootfs").unwrap(),
            Path::new("/share/c1/rootfs")
        );
        assert_eq!(resolve_in(root, "./c1").unwrap(), Path::new("/share/./c1"));
        for bad in ["", "/etc", "../x", "c1/../../x"] {
            assert!(resolve_in(root, bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_missing_cwd_is_created_inside_the_rootfs_only() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        ensure_cwd(&rootfs, Path::new("/work/here")).unwrap();
        let made = rootfs.join("work/here");
        assert!(made.is_dir());
        assert_eq!(
            made.metadata().unwrap().permissions().mode() & 0o7777,
            0o755
        );
        // Existing directories are fine; a symlink is never followed.
        ensure_cwd(&rootfs, Path::new("/etc")).unwrap();
        symlink(&outside, rootfs.join("escape")).unwrap();
        ensure_cwd(&rootfs, Path::new("/escape/new")).unwrap();
        assert!(!outside.join("new").exists());
        ensure_cwd(&rootfs, Path::new("/../x")).unwrap();
        ensure_cwd(&rootfs, Path::new("")).unwrap();
        assert!(!dir.path().join("x").exists());
        let e = ensure_cwd(&rootfs, Path::new("rel")).unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
    }

    #[test]
    fn cgroup_counters_parse_v1_and_v2_formats() {
        assert_eq!(
            parse_counter("low 0\nhigh 0\nmax 4\noom 2\noom_kill 1\n", "oom_kill"),
            Some(1)
        );
        assert_eq!(
            parse_counter("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "oom_kill"),
            Some(3)
        );
        assert_eq!(parse_counter("oom 2\n", "oom_kill"), None);
        assert_eq!(parse_counter("oom_kill x\n", "oom_kill"), None);
    }
}
