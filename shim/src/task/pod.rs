//! One pod: its microVM (booted with the first container, stopped after the last one is
//! deleted) and its containers and exec processes, as containerd sees them.
//!
//! State is per container and per process behind their own locks; the VM slot is locked
//! only to boot or stop it, never across an RPC to the agent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use hull_protocol::agent::{self as ag, StdioStreams};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::agent::{Agent, AgentError};
use crate::backend::qemu::SHARE_TAG;
use crate::vm::{Vm, VmConfig, VmError};

use super::{logging, stdio};

/// Errors of pod operations; each maps to one ttrpc code.
#[derive(Debug, Error)]
pub enum PodError {
    /// Bad input (bundle, spec, mounts); the message names it.
    #[error("{0}")]
    InvalidArgument(String),
    /// Unknown container or exec id.
    #[error("{0} not found")]
    NotFound(String),
    /// The id is taken.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// Wrong state for the request.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The VM could not be booted.
    #[error("booting the pod VM: {0}")]
    Boot(#[from] VmError),
    /// The agent failed; its status code is kept.
    #[error("{0}")]
    Agent(#[from] AgentError),
    /// Host-side I/O (mounts, FIFOs, files).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl PodError {
    /// The ttrpc code containerd sees.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            PodError::InvalidArgument(_) => ttrpc::Code::INVALID_ARGUMENT,
            PodError::NotFound(_) => ttrpc::Code::NOT_FOUND,
            PodError::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
            PodError::FailedPrecondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            PodError::Boot(
                VmError::Image { .. } | VmError::InvalidConfig(_) | VmError::InvalidId { .. },
            ) => ttrpc::Code::INVALID_ARGUMENT,
            PodError::Boot(_) => ttrpc::Code::UNAVAILABLE,
            PodError::Agent(AgentError::Rpc {
                source: ttrpc::Error::RpcStatus(s),
                ..
            }) => s.code(),
            PodError::Agent(_) => ttrpc::Code::UNAVAILABLE,
            PodError::Io { .. } => ttrpc::Code::INTERNAL,
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PodError {
    let what = what.into();
    move |source| PodError::Io { what, source }
}

/// containerd's view of a process's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Frozen (cgroup freezer).
    Paused,
    /// Exited.
    Stopped,
}

/// How a process ended: runc-style status and when.
#[derive(Debug, Clone, PartialEq)]
pub struct Exited {
    /// Exit code or 128 + signal.
    pub status: u32,
    /// When the shim learned of it.
    pub at: Timestamp,
}

/// containerd's stdio paths for a process.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    /// stdin FIFO ("" = none).
    pub stdin: String,
    /// stdout FIFO.
    pub stdout: String,
    /// stderr FIFO.
    pub stderr: String,
    /// Whether the process has a terminal.
    pub terminal: bool,
}

/// One process (a container's init, or an exec).
#[derive(Debug)]
pub struct Proc {
    /// The container.
    pub container_id: String,
    /// "" for the init process.
    pub exec_id: String,
    /// The agent-side pid, once started (init: once created).
    pub pid: Mutex<u32>,
    /// Lifecycle state.
    pub status: Mutex<Status>,
    /// Set once the process exited.
    pub exit: watch::Sender<Option<Exited>>,
    /// The stdio paths.
    pub stdio: StdioPaths,
    /// For an exec: its OCI process, JSON, until it is started.
    pub spec: Vec<u8>,
    io_tasks: Mutex<Vec<JoinHandle<()>>>,
    stdin_task: Mutex<Option<JoinHandle<()>>>,
    /// The `binary://` logging program, if output goes to one.
    logger: Mutex<Option<tokio::process::Child>>,
}

impl Proc {
    fn new(container_id: &str, exec_id: &str, stdio: StdioPaths, spec: Vec<u8>) -> Arc<Proc> {
        Arc::new(Proc {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            pid: Mutex::new(0),
            status: Mutex::new(Status::Created),
            exit: watch::channel(None).0,
            stdio,
            spec,
            io_tasks: Mutex::new(vec![]),
            stdin_task: Mutex::new(None),
            logger: Mutex::new(None),
        })
    }

    /// The agent-side pid (0 before start for execs).
    pub fn pid(&self) -> u32 {
        *self.pid.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current status.
    pub fn status(&self) -> Status {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the status (pause/resume).
    pub fn set_status(&self, s: Status) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> Exited {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                return Exited {
                    status: 255,
                    at: now(),
                };
            }
        }
    }

    /// The exit, if it happened.
    pub fn exited(&self) -> Option<Exited> {
        self.exit.borrow().clone()
    }

    fn stream_ids(&self) -> [String; 3] {
        let base = if self.exec_id.is_empty() {
            self.container_id.clone()
        } else {
            format!("{}.{}", self.container_id, self.exec_id)
        };
        let named = |path: &str, what: &str| {
            if path.is_empty() {
                String::new()
            } else {
                format!("{base}.{what}")
            }
        };
        [
            named(&self.stdio.stdin, "stdin"),
            named(&self.stdio.stdout, "stdout"),
            // With a terminal everything comes through the terminal (stdout).
            if self.stdio.terminal {
                String::new()
            } else {
                named(&self.stdio.stderr, "stderr")
            },
        ]
    }

    /// Opens the agent streams for this process's stdio and starts the bridges. Returns
    /// the stream ids to name in the agent request.
    async fn connect_stdio(
        &self,
        agent: &Agent,
        namespace: &str,
    ) -> Result<MessageField<StdioStreams>, PodError> {
        let [stdin_id, stdout_id, stderr_id] = self.stream_ids();
        let mut outputs = logging::open(
            if stdout_id.is_empty() {
                ""
            } else {
                &self.stdio.stdout
            },
            if stderr_id.is_empty() {
                ""
            } else {
                &self.stdio.stderr
            },
            &self.container_id,
            namespace,
        )
        .await
        .map_err(|e| PodError::InvalidArgument(e.to_string()))?;
        *self.logger.lock().unwrap_or_else(|e| e.into_inner()) = outputs.logger.take();
        for (id, out) in [
            (&stdout_id, outputs.stdout.take()),
            (&stderr_id, outputs.stderr.take()),
        ] {
            let Some(out) = out else { continue };
            let stream = agent.open_stream(id).await?;
            let t = stdio::copy_output(stream, out);
            self.io_tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(t);
        }
        if !stdin_id.is_empty() {
            let stream = agent.open_stream(&stdin_id).await?;
            *self.stdin_task.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(stdio::fifo_to_input(stream, Path::new(&self.stdio.stdin)));
        }
        Ok(MessageField::some(StdioStreams {
            stdin: stdin_id,
            stdout: stdout_id,
            stderr: stderr_id,
            ..Default::default()
        }))
    }

    /// Records the exit once the agent reports it (after all output reached the FIFOs).
    async fn record_exit(&self, status: u32) -> Exited {
        let tasks: Vec<_> =
            std::mem::take(&mut *self.io_tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        let logger = self.logger.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(child) = logger {
            // Its input is complete; containerd's shims let it finish before the exit.
            logging::finish_logger(child).await;
        }
        let e = Exited { status, at: now() };
        self.set_status(Status::Stopped);
        self.exit.send_replace(Some(e.clone()));
        e
    }

    fn abort_io(&self) {
        // Dropping the child kills it (kill_on_drop).
        drop(self.logger.lock().unwrap_or_else(|e| e.into_inner()).take());
        for t in self
            .io_tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
        if let Some(t) = self
            .stdin_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            if !t.is_finished() {
                stdio::unblock_fifo_open(Path::new(&self.stdio.stdin));
            }
            t.abort();
        }
    }
}

/// The current time as a protobuf timestamp.
pub fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

/// One container.
#[derive(Debug)]
pub struct Container {
    /// Its id.
    pub id: String,
    /// containerd's bundle directory.
    pub bundle: PathBuf,
    /// Its init process.
    pub init: Arc<Proc>,
    /// Exec processes by id.
    pub execs: Mutex<HashMap<String, Arc<Proc>>>,
    /// Where its rootfs is mounted on the host (inside the pod share).
    rootfs: PathBuf,
}

impl Container {
    /// The process `exec_id` ("" = init).
    pub fn process(&self, exec_id: &str) -> Result<Arc<Proc>, PodError> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| {
                PodError::NotFound(format!("exec {exec_id:?} of container {:?}", self.id))
            })
    }
}

/// What the pod does when a process exits (the service publishes events).
pub type ExitHook = Arc<dyn Fn(&Proc, &Exited) + Send + Sync>;

/// What the pod does when the OOM killer hits one of its containers (the container id).
pub type OomHook = Arc<dyn Fn(&str) + Send + Sync>;

/// How a pod's VM is made: the configuration and backend resolved at its first create.
#[derive(Debug)]
pub struct VmSetup {
    /// How the VM boots.
    pub vm_cfg: VmConfig,
    /// The backend that runs it.
    pub hypervisor: Box<dyn crate::backend::Hypervisor>,
}

/// The pod.
pub struct Pod {
    /// The pod id (sandbox id, or the container id for a plain `ctr run`).
    pub id: String,
    /// containerd's namespace of the pod's containers.
    pub namespace: String,
    setup: Mutex<Option<Arc<VmSetup>>>,
    vm: tokio::sync::Mutex<Option<Vm>>,
    agent: Mutex<Option<Agent>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    on_exit: ExitHook,
    on_oom: OomHook,
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Pod {
    /// A pod with no VM yet; [`Pod::configure`] says how to make it.
    pub fn new(id: &str, namespace: &str, on_exit: ExitHook, on_oom: OomHook) -> Arc<Pod> {
        Arc::new(Pod {
            id: id.into(),
            namespace: namespace.into(),
            setup: Mutex::new(None),
            vm: tokio::sync::Mutex::new(None),
            agent: Mutex::new(None),
            containers: Mutex::new(HashMap::new()),
            on_exit,
            on_oom,
        })
    }

    /// Whether the pod's VM setup is decided (by an earlier create).
    pub fn is_configured(&self) -> bool {
        self.setup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Decides how the pod's VM is made, unless an earlier create already did.
    pub fn configure(&self, setup: VmSetup) {
        let mut slot = self.setup.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(Arc::new(setup));
        }
    }

    fn vm_setup(&self) -> Result<Arc<VmSetup>, PodError> {
        self.setup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| PodError::FailedPrecondition("the pod's VM is not configured".into()))
    }

    /// The container `id`.
    pub fn container(&self, id: &str) -> Result<Arc<Container>, PodError> {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| PodError::NotFound(format!("container {id:?}")))
    }

    /// Number of containers.
    pub fn len(&self) -> usize {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Whether the pod has no containers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn agent(&self) -> Result<Agent, PodError> {
        self.agent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| PodError::FailedPrecondition("the pod VM is not running".into()))
    }

    /// Boots the VM if it is not running; returns the agent and the share directory.
    /// `hostname` names the guest (the first container's spec hostname: the pod's, under
    /// CRI); without one the guest takes the host's name, which is what a runc container
    /// without a hostname sees in its new UTS namespace.
    async fn ensure_vm(&self, hostname: Option<&str>) -> Result<(Agent, PathBuf), PodError> {
        let mut slot = self.vm.lock().await;
        if let Some(vm) = slot.as_ref() {
            let share = vm
                .share_dir()
                .ok_or_else(|| PodError::FailedPrecondition("the VM has no share".into()))?;
            return Ok((vm.agent().clone(), share));
        }
        // This shim owns the pod id (it holds the pod's socket): a state directory left by a
        // dead predecessor is stale, and would block the boot.
        let setup = self.vm_setup()?;
        let stale = setup.vm_cfg.state_root.join(&self.id);
        if stale.exists() {
            log::warn!(
                "pod {}: cleaning up stale state {}",
                self.id,
                stale.display()
            );
            tokio::task::spawn_blocking(move || {
                crate::reclaim::reclaim(&stale, crate::reclaim::BUDGET)
            })
            .await
            .map_err(|e| PodError::FailedPrecondition(format!("cleaning up stale state: {e}")))?
            .map_err(|e| PodError::FailedPrecondition(e.to_string()))?;
        }
        let vm = Vm::boot(setup.hypervisor.as_ref(), &self.id, &setup.vm_cfg).await?;
        let agent = vm.agent().clone();
        let share = vm
            .share_dir()
            .ok_or_else(|| PodError::FailedPrecondition("the VM has no share".into()))?;
        let (client, ctx) = agent.raw();
        let setup = client
            .create_sandbox(
                ctx,
                &ag::CreateSandboxRequest {
                    share_tag: SHARE_TAG.into(),
                    hostname: match hostname.filter(|h| !h.is_empty()) {
                        Some(h) => h.to_string(),
                        None => nix::unistd::gethostname()
                            .map(|h| h.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                    },
                    ..Default::default()
                },
            )
            .await;
        if let Err(source) = setup {
            vm.kill().await;
            return Err(AgentError::Rpc {
                rpc: "CreateSandbox",
                source,
            }
            .into());
        }
        *self.agent.lock().unwrap_or_else(|e| e.into_inner()) = Some(agent.clone());
        *slot = Some(vm);
        self.watch_oom(agent.clone());
        Ok((agent, share))
    }

    /// Stops the VM (after the last container is gone).
    pub async fn stop_vm(&self) {
        let vm = self.vm.lock().await.take();
        *self.agent.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Some(vm) = vm {
            let outcome = vm.shutdown(Duration::from_secs(10)).await;
            log::info!("pod {}: VM stopped: {outcome:?}", self.id);
        }
    }

    /// Creates a container: boots the VM if needed, mounts the rootfs into the share,
    /// connects stdio, creates it in the guest.
    pub async fn create(
        self: &Arc<Self>,
        id: &str,
        bundle: &Path,
        rootfs: &[containerd_shim::protos::api::Mount],
        stdio: StdioPaths,
    ) -> Result<u32, PodError> {
        if self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
        {
            return Err(PodError::AlreadyExists(format!("container {id:?}")));
        }
        crate::vm::validate_id(id).map_err(|e| PodError::InvalidArgument(e.to_string()))?;
        let spec = std::fs::read(bundle.join("config.json")).map_err(|e| {
            PodError::InvalidArgument(format!("reading {}/config.json: {e}", bundle.display()))
        })?;
        let parsed: serde_json::Value = serde_json::from_slice(&spec).map_err(|e| {
            PodError::InvalidArgument(format!("{}/config.json: {e}", bundle.display()))
        })?;
        let (agent, share) = self.ensure_vm(parsed["hostname"].as_str()).await?;
        let target = share.join(id).join("rootfs");
        std::fs::create_dir_all(&target).map_err(io(format!("creating {}", target.display())))?;
        let result = self
            .create_mounted(&agent, id, bundle, rootfs, &parsed, &spec, &target, stdio)
            .await;
        if result.is_err() {
            crate::util::unmount_all_under(&share.join(id));
            let _ = std::fs::remove_dir_all(share.join(id));
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_mounted(
        self: &Arc<Self>,
        agent: &Agent,
        id: &str,
        bundle: &Path,
        rootfs: &[containerd_shim::protos::api::Mount],
        parsed: &serde_json::Value,
        spec: &[u8],
        target: &Path,
        stdio: StdioPaths,
    ) -> Result<u32, PodError> {
        if rootfs.is_empty() {
            // No mounts from containerd: the bundle carries a prepared rootfs (spec root.path).
            let root = parsed["root"]["path"].as_str().unwrap_or("rootfs");
            let src = bundle.join(root);
            nix::mount::mount(
                Some(&src),
                target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| {
                PodError::InvalidArgument(format!("bind-mounting rootfs {}: {e}", src.display()))
            })?;
        }
        for m in rootfs {
            containerd_shim::util::mount_rootfs(m, target)
                .await
                .map_err(|e| {
                    PodError::InvalidArgument(format!(
                        "mounting rootfs ({} {}): {e}",
                        m.type_, m.source
                    ))
                })?;
        }
        let proc = Proc::new(id, "", stdio, vec![]);
        let streams = proc.connect_stdio(agent, &self.namespace).await?;
        let (client, ctx) = agent.raw();
        let req = ag::CreateContainerRequest {
            container_id: id.into(),
            spec_json: spec.to_vec(),
            rootfs: format!("{id}/rootfs"),
            stdio: streams,
            ..Default::default()
        };
        let r = client.create_container(ctx, &req).await;
        let r = match r {
            Ok(r) => r,
            Err(source) => {
                proc.abort_io();
                return Err(AgentError::Rpc {
                    rpc: "CreateContainer",
                    source,
                }
                .into());
            }
        };
        *proc.pid.lock().unwrap_or_else(|e| e.into_inner()) = r.pid;
        let c = Arc::new(Container {
            id: id.into(),
            bundle: bundle.to_path_buf(),
            init: proc,
            execs: Mutex::new(HashMap::new()),
            rootfs: target.to_path_buf(),
        });
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.into(), c);
        Ok(r.pid)
    }

    /// Watches for the process's exit and records it.
    /// Relays the agent's OOM events (a long poll, one event per call) until the agent is
    /// gone: the VM stopped or died.
    fn watch_oom(&self, agent: Agent) {
        let (on_oom, pod) = (self.on_oom.clone(), self.id.clone());
        tokio::spawn(async move {
            let (client, _) = agent.raw();
            loop {
                // No deadline: an OOM may never come.
                let ctx = ttrpc::context::Context::default();
                match client.get_oom_event(ctx, &ag::Empty::new()).await {
                    Ok(e) if !e.container_id.is_empty() => on_oom(&e.container_id),
                    Ok(_) => {}
                    Err(e) => {
                        log::debug!("pod {pod}: OOM events end: {e}");
                        return;
                    }
                }
            }
        });
    }

    fn watch_exit(self: &Arc<Self>, agent: Agent, p: Arc<Proc>) {
        let pod = self.clone();
        tokio::spawn(async move {
            let (client, _) = agent.raw();
            // No deadline: a process may run for as long as it likes.
            let ctx = ttrpc::context::Context::default();
            let req = ag::ProcessRequest {
                container_id: p.container_id.clone(),
                exec_id: p.exec_id.clone(),
                ..Default::default()
            };
            let status = match client.wait_process(ctx, &req).await {
                Ok(w) => w.exit_status as u32,
                Err(e) => {
                    // The agent is gone (VM died): containerd's convention for a lost task.
                    log::warn!("waiting for {}/{}: {e}", p.container_id, p.exec_id);
                    p.abort_io();
                    255
                }
            };
            let exited = p.record_exit(status).await;
            (pod.on_exit)(&p, &exited);
        });
    }

    /// Starts the init process or an exec.
    pub async fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<u32, PodError> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        if p.status() != Status::Created {
            return Err(PodError::FailedPrecondition(format!(
                "{id}/{exec_id} is not in the created state"
            )));
        }
        let agent = self.agent()?;
        let (client, ctx) = agent.raw();
        if exec_id.is_empty() {
            client
                .start_container(
                    ctx,
                    &ag::ContainerRequest {
                        container_id: id.into(),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|source| AgentError::Rpc {
                    rpc: "StartContainer",
                    source,
                })?;
        } else {
            let streams = p.connect_stdio(&agent, &self.namespace).await?;
            let r = client
                .exec_process(
                    ctx,
                    &ag::ExecProcessRequest {
                        container_id: id.into(),
                        exec_id: exec_id.into(),
                        process_json: p.spec.clone(),
                        stdio: streams,
                        ..Default::default()
                    },
                )
                .await;
            match r {
                Ok(r) => *p.pid.lock().unwrap_or_else(|e| e.into_inner()) = r.pid,
                Err(source) => {
                    p.abort_io();
                    return Err(AgentError::Rpc {
                        rpc: "ExecProcess",
                        source,
                    }
                    .into());
                }
            }
        }
        p.set_status(Status::Running);
        self.watch_exit(agent, p.clone());
        Ok(p.pid())
    }

    /// Registers an exec process (started by a later `start`).
    pub fn add_exec(
        &self,
        id: &str,
        exec_id: &str,
        spec: Vec<u8>,
        stdio: StdioPaths,
    ) -> Result<(), PodError> {
        let c = self.container(id)?;
        crate::vm::validate_id(exec_id)
            .map_err(|e| PodError::InvalidArgument(format!("exec id: {e}")))?;
        if c.init.status() != Status::Running {
            return Err(PodError::FailedPrecondition(format!(
                "container {id:?} is not running"
            )));
        }
        let mut execs = c.execs.lock().unwrap_or_else(|e| e.into_inner());
        if execs.contains_key(exec_id) {
            return Err(PodError::AlreadyExists(format!("exec {exec_id:?}")));
        }
        execs.insert(exec_id.into(), Proc::new(id, exec_id, stdio, spec));
        Ok(())
    }

    /// Signals a process (or all of the container's).
    pub async fn kill(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), PodError> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        // containerd treats NotFound as "already finished" (e.g. `task rm -f` after the VM
        // died); a stopped container has nothing left to signal, even with `all`.
        if p.status() == Status::Stopped {
            return Err(PodError::NotFound(format!(
                "process {id}/{exec_id} has exited"
            )));
        }
        let (client, ctx) = self.agent()?.raw_owned();
        client
            .signal_process(
                ctx,
                &ag::SignalProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    signal,
                    all,
                    ..Default::default()
                },
            )
            .await
            .map_err(|source| AgentError::Rpc {
                rpc: "SignalProcess",
                source,
            })?;
        Ok(())
    }

    /// Deletes an exec (forgotten) or a container (removed in the guest, rootfs unmounted).
    /// Returns the deleted process's pid and exit.
    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<(u32, Exited), PodError> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        if matches!(p.status(), Status::Running | Status::Paused) {
            return Err(PodError::FailedPrecondition(format!(
                "{id}/{exec_id} is still running"
            )));
        }
        let exited = p.exited().unwrap_or(Exited {
            status: 0,
            at: now(),
        });
        if !exec_id.is_empty() {
            c.execs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(exec_id);
            return Ok((p.pid(), exited));
        }
        if let Ok(agent) = self.agent() {
            let (client, ctx) = agent.raw();
            let r = client
                .remove_container(
                    ctx,
                    &ag::ContainerRequest {
                        container_id: id.into(),
                        ..Default::default()
                    },
                )
                .await;
            if let Err(e) = r {
                log::warn!("removing {id} in the guest: {e}");
            }
        }
        p.abort_io();
        if let Some(dir) = c.rootfs.parent() {
            crate::util::unmount_all_under(dir);
            let _ = std::fs::remove_dir_all(dir);
        }
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        Ok((p.pid(), exited))
    }

    /// Runs `f` with the agent client (for the simple pass-through RPCs).
    pub fn agent_for(&self, id: &str) -> Result<Agent, PodError> {
        self.container(id)?;
        self.agent()
    }

    /// Closes a process's stdin.
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), PodError> {
        let p = self.container(id)?.process(exec_id)?;
        let task = p
            .stdin_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = task {
            // Let what the FIFO already delivered reach the agent first.
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        let (client, ctx) = self.agent()?.raw_owned();
        client
            .close_stdin(
                ctx,
                &ag::ProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|source| AgentError::Rpc {
                rpc: "CloseStdin",
                source,
            })?;
        Ok(())
    }

    /// Marks every process exited with 255 (the VM died) and reports each.
    pub fn fail_all(&self) {
        let containers: Vec<_> = self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for c in containers {
            let mut procs = vec![c.init.clone()];
            procs.extend(
                c.execs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .cloned(),
            );
            for p in procs {
                if p.exited().is_none() && matches!(p.status(), Status::Running | Status::Paused) {
                    p.abort_io();
                    let e = Exited {
                        status: 255,
                        at: now(),
                    };
                    p.set_status(Status::Stopped);
                    p.exit.send_replace(Some(e.clone()));
                    (self.on_exit)(&p, &e);
                }
            }
        }
    }
}
