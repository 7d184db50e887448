//! `containerd-shim-hull-v2`: containerd's Task API v2 on hull's VMs.
//!
//! One shim process serves one pod: containers that carry the same
//! `io.kubernetes.cri.sandbox-id` annotation share it (and its VM); a plain `ctr run` is a
//! pod of its own. Handlers are thin: validate, call [`pod::Pod`], map the error to a ttrpc
//! code, publish the event containerd's runtime v2 contract asks for.

pub mod logging;
pub mod pod;
pub mod stdio;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::event::Event;
use containerd_shim::protos::api;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, Error, Flags, StartOpts, TtrpcResult};
use hull_protocol::agent as ag;

use crate::agent::AgentError;
use crate::check;
use crate::config::{self, Config as HullConfig};
use pod::{Exited, Pod, PodError, Proc, Status, StdioPaths, VmSetup};

/// The annotation containerd's CRI plugin puts on every container of a pod.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// The pod a bundle belongs to: its sandbox id, or the container's own id.
pub fn pod_id_of(bundle: &Path, container_id: &str) -> String {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v["annotations"][SANDBOX_ID_ANNOTATION]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_else(|| container_id.to_string())
}

fn status(e: PodError) -> containerd_shim::protos::ttrpc::Error {
    log::warn!("{e}");
    containerd_shim::protos::ttrpc::Error::RpcStatus(containerd_shim::protos::ttrpc::get_status(
        e.code(),
        e.to_string(),
    ))
}

fn agent_status(
    rpc: &'static str,
) -> impl FnOnce(ttrpc::Error) -> containerd_shim::protos::ttrpc::Error {
    move |source| status(PodError::Agent(AgentError::Rpc { rpc, source }))
}

/// The `start` action: returns the address of the pod's shim, spawning it unless a later
/// container of a running pod can join the pod's existing shim.
pub async fn start_pod_shim(opts: StartOpts) -> Result<String, Error> {
    let cwd = std::env::current_dir().map_err(|e| Error::Other(format!("cwd: {e}")))?;
    let grouping = pod_id_of(&cwd, &opts.id);
    let address = opts.socket_address(&grouping);
    let joined = match address.strip_prefix("unix://") {
        Some(path) if std::os::unix::net::UnixStream::connect(path).is_ok() => true,
        Some(path) => {
            // Nobody serves it: a dead shim's socket file, which would keep the new one
            // from binding.
            let _ = std::fs::remove_file(path);
            false
        }
        None => false,
    };
    let address = if joined {
        address
    } else {
        spawn(opts, &grouping, Vec::new()).await?
    };
    // containerd reconnects to running shims after a restart by reading `address` in each
    // bundle (runtime v2 `loadShims`); writing it is the shim's job, as runc's shim does.
    std::fs::write(cwd.join("address"), &address)
        .map_err(|e| Error::Other(format!("writing {}/address: {e}", cwd.display())))?;
    Ok(address)
}

/// containerd 1.6's `start` contract: the flags and `TTRPC_ADDRESS` carry the parameters,
/// and stdout must hold the bare socket address (containerd-shim 0.12 answers newer
/// containerds' JSON/protobuf bootstrap format, which 1.6 cannot read).
pub fn legacy_start_opts(flags: &Flags) -> StartOpts {
    StartOpts {
        id: flags.id.clone(),
        publish_binary: flags.publish_binary.clone(),
        address: flags.address.clone(),
        ttrpc_address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        namespace: flags.namespace.clone(),
        debug: flags.debug,
        ..Default::default()
    }
}

/// The shim process.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // ExitSignal has no Debug
pub struct HullShim {
    exit: Arc<ExitSignal>,
    id: String,
    namespace: String,
    address: String,
}

#[async_trait]
impl Shim for HullShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        HullShim {
            exit: Arc::new(ExitSignal::default()),
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            address: args.address.clone(),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        start_pod_shim(opts).await
    }

    async fn delete_shim(&mut self) -> Result<api::DeleteResponse, Error> {
        // containerd thinks this container's shim died. If the pod's shim still serves (it
        // does after every task delete of a multi-container pod: containerd 1.6 runs this
        // action whenever it drops a task connection), it owns the VM: leave it alone.
        // Otherwise clean up what the pod left, from its state directory alone.
        let cwd = std::env::current_dir().unwrap_or_default();
        let pod = pod_id_of(&cwd, &self.id);
        let address = containerd_shim::socket_address(&self.address, &self.namespace, &pod);
        let alive = address
            .strip_prefix("unix://")
            .is_some_and(|p| std::os::unix::net::UnixStream::connect(p).is_ok());
        if !alive && crate::vm::validate_id(&pod).is_ok() {
            let dir = Path::new(crate::DEFAULT_STATE_ROOT).join(&pod);
            if let Err(e) = crate::reclaim::reclaim(&dir, crate::reclaim::BUDGET) {
                // Not an error reply: containerd would then keep the bundle too. Our stderr
                // reaches containerd's log as "cleanup warnings".
                eprintln!("io.containerd.hull.v2: delete: {e}");
            }
        }
        Ok(api::DeleteResponse {
            exit_status: 137,
            exited_at: MessageField::some(pod::now()),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let events = Events::new(publisher, self.namespace.clone());
        let ev2 = events.clone();
        let on_exit: pod::ExitHook = Arc::new(move |p: &Proc, e: &Exited| {
            let ev = TaskExit {
                container_id: p.container_id.clone(),
                id: if p.exec_id.is_empty() {
                    p.container_id.clone()
                } else {
                    p.exec_id.clone()
                },
                pid: p.pid(),
                exit_status: e.status,
                exited_at: MessageField::some(e.at.clone()),
                ..Default::default()
            };
            ev2.publish(ev);
        });
        let ev3 = events.clone();
        let on_oom: pod::OomHook = Arc::new(move |container_id: &str| {
            log::info!("OOM kill in {container_id}");
            ev3.publish(TaskOOM {
                container_id: container_id.to_string(),
                ..Default::default()
            });
        });
        let pod_id = pod_id_of(&std::env::current_dir().unwrap_or_default(), &self.id);
        TaskService {
            pod: Pod::new(&pod_id, &self.namespace, on_exit, on_oom),
            events,
            exit: self.exit.clone(),
        }
    }
}

/// Resolves how a pod's VM is made: the configuration (the file `config_path` names, else
/// `HULL_CONFIG`, else `/etc/hull/config.toml`) and a backend this host can run. Errors name
/// the file, key or missing piece.
pub async fn vm_setup(config_path: Option<&Path>) -> Result<VmSetup, PodError> {
    let cfg =
        HullConfig::load(config_path).map_err(|e| PodError::InvalidArgument(e.to_string()))?;
    log::set_max_level(cfg.log_level);
    let report = check::run_cached(cfg.backend_request(), &cfg.image).await;
    let choice = report
        .backend
        .map_err(|e| PodError::FailedPrecondition(format!("no usable hypervisor backend: {e}")))?;
    log::info!(
        "config {}: backend {} ({}), {} vCPU, {} MiB",
        cfg.source
            .as_deref()
            .map_or("(defaults)".into(), |p| p.display().to_string()),
        choice.backend,
        choice.reason,
        cfg.vcpus,
        cfg.memory_mib
    );
    let mut vm_cfg = cfg.vm_config();
    vm_cfg.share = true;
    Ok(VmSetup {
        vm_cfg,
        hypervisor: check::backend(&choice, cfg.jail_ids),
    })
}

type Queued = (
    String,
    Box<dyn MessageDyn>,
    Option<tokio::sync::oneshot::Sender<()>>,
);

/// containerd's event publisher behind one queue: events reach containerd in the order they
/// were published (runtime v2 requires create < start < exit < delete for a task), which a
/// task per event would not guarantee.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // RemotePublisher has no Debug
pub struct Events {
    tx: tokio::sync::mpsc::UnboundedSender<Queued>,
}

impl Events {
    /// Starts the queue's sender task.
    pub fn new(publisher: RemotePublisher, namespace: String) -> Events {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Queued>();
        tokio::spawn(async move {
            while let Some((topic, event, done)) = rx.recv().await {
                if let Some(done) = done {
                    let _ = done.send(());
                    continue;
                }
                let ctx = containerd_shim::Context::default();
                if let Err(e) = publisher.publish(ctx, &topic, &namespace, event).await {
                    log::warn!("publishing {topic}: {e}");
                }
            }
        });
        Events { tx }
    }

    /// Queues `event`.
    pub fn publish<E: Event + 'static>(&self, event: E) {
        let _ = self.tx.send((event.topic(), Box::new(event), None));
    }

    /// Waits (at most `limit`) until every event queued so far was handed to containerd.
    pub async fn flush(&self, limit: std::time::Duration) {
        let (done, wait) = tokio::sync::oneshot::channel();
        let marker = (
            String::new(),
            Box::new(api::Empty::new()) as Box<dyn MessageDyn>,
            Some(done),
        );
        if self.tx.send(marker).is_ok() {
            let _ = tokio::time::timeout(limit, wait).await;
        }
    }
}

/// The Task service of one pod.
#[allow(missing_debug_implementations)] // RemotePublisher has no Debug
pub struct TaskService {
    pod: Arc<Pod>,
    events: Events,
    exit: Arc<ExitSignal>,
}

impl TaskService {
    fn publish<E: Event + 'static>(&self, event: E) {
        self.events.publish(event);
    }
}

fn any_json(
    a: &MessageField<containerd_shim::protos::protobuf::well_known_types::any::Any>,
    what: &str,
) -> TtrpcResult<Vec<u8>> {
    a.as_ref()
        .map(|a| a.value.clone())
        .ok_or_else(|| status(PodError::InvalidArgument(format!("{what} is missing"))))
}

#[async_trait]
impl Task for TaskService {
    async fn state(
        &self,
        _: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let c = self.pod.container(&req.id).map_err(status)?;
        let p = c.process(&req.exec_id).map_err(status)?;
        let exited = p.exited();
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: p.pid(),
            status: match p.status() {
                Status::Created => api::Status::CREATED,
                Status::Running => api::Status::RUNNING,
                Status::Paused => api::Status::PAUSED,
                Status::Stopped => api::Status::STOPPED,
            }
            .into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exited.as_ref().map(|e| e.status).unwrap_or(0),
            exited_at: exited.map(|e| MessageField::some(e.at)).unwrap_or_default(),
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    async fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        log::info!("create {} bundle={}", req.id, req.bundle);
        if !req.checkpoint.is_empty() {
            return Err(status(PodError::InvalidArgument(
                "restoring from a checkpoint is not supported".into(),
            )));
        }
        if !self.pod.is_configured() {
            let path = match req.options.as_ref() {
                Some(o) => config::config_path_of(&o.type_url, &o.value)
                    .map_err(|e| status(PodError::InvalidArgument(e.to_string())))?,
                None => None,
            };
            self.pod
                .configure(vm_setup(path.as_deref()).await.map_err(status)?);
        }
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let pid = self
            .pod
            .create(&req.id, &PathBuf::from(&req.bundle), &req.rootfs, stdio)
            .await
            .map_err(status)?;
        self.publish(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                terminal: req.terminal,
                ..Default::default()
            }),
            pid,
            ..Default::default()
        });
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        log::info!("start {}/{}", req.id, req.exec_id);
        let pid = self
            .pod
            .start(&req.id, &req.exec_id)
            .await
            .map_err(status)?;
        if req.exec_id.is_empty() {
            self.publish(TaskStart {
                container_id: req.id,
                pid,
                ..Default::default()
            });
        } else {
            self.publish(TaskExecStarted {
                container_id: req.id,
                exec_id: req.exec_id,
                pid,
                ..Default::default()
            });
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        log::info!("delete {}/{}", req.id, req.exec_id);
        let (pid, exited) = self
            .pod
            .delete(&req.id, &req.exec_id)
            .await
            .map_err(status)?;
        if req.exec_id.is_empty() {
            self.publish(TaskDelete {
                container_id: req.id.clone(),
                pid,
                exit_status: exited.status,
                exited_at: MessageField::some(exited.at.clone()),
                id: req.id.clone(),
                ..Default::default()
            });
            if self.pod.is_empty() {
                self.pod.stop_vm().await;
            }
        }
        Ok(api::DeleteResponse {
            pid,
            exit_status: exited.status,
            exited_at: MessageField::some(exited.at),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let (client, ctx) = self.pod.agent_for(&req.id).map_err(status)?.raw_owned();
        let r = client
            .list_processes(
                ctx,
                &ag::ContainerRequest {
                    container_id: req.id,
                    ..Default::default()
                },
            )
            .await
            .map_err(agent_status("ListProcesses"))?;
        Ok(api::PidsResponse {
            processes: r
                .pids
                .into_iter()
                .map(|pid| api::ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let (client, ctx) = self.pod.agent_for(&req.id).map_err(status)?.raw_owned();
        client
            .pause_container(
                ctx,
                &ag::ContainerRequest {
                    container_id: req.id.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(agent_status("PauseContainer"))?;
        if let Ok(c) = self.pod.container(&req.id) {
            c.init.set_status(Status::Paused);
        }
        self.publish(TaskPaused {
            container_id: req.id,
            ..Default::default()
        });
        Ok(api::Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        let (client, ctx) = self.pod.agent_for(&req.id).map_err(status)?.raw_owned();
        client
            .resume_container(
                ctx,
                &ag::ContainerRequest {
                    container_id: req.id.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(agent_status("ResumeContainer"))?;
        if let Ok(c) = self.pod.container(&req.id) {
            c.init.set_status(Status::Running);
        }
        self.publish(TaskResumed {
            container_id: req.id,
            ..Default::default()
        });
        Ok(api::Empty::new())
    }

    async fn checkpoint(
        &self,
        _: &TtrpcContext,
        _: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(containerd_shim::protos::ttrpc::Error::RpcStatus(
            containerd_shim::protos::ttrpc::get_status(
                ttrpc::Code::UNIMPLEMENTED,
                "checkpointing a hull VM is not supported",
            ),
        ))
    }

    async fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        log::info!(
            "kill {}/{} signal={} all={}",
            req.id,
            req.exec_id,
            req.signal,
            req.all
        );
        self.pod
            .kill(&req.id, &req.exec_id, req.signal, req.all)
            .await
            .map_err(status)?;
        Ok(api::Empty::new())
    }

    async fn exec(
        &self,
        _: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        log::info!("exec {}/{}", req.id, req.exec_id);
        let spec = any_json(&req.spec, "the exec process spec")?;
        let stdio = StdioPaths {
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            terminal: req.terminal,
        };
        self.pod
            .add_exec(&req.id, &req.exec_id, spec, stdio)
            .map_err(status)?;
        self.publish(TaskExecAdded {
            container_id: req.id,
            exec_id: req.exec_id,
            ..Default::default()
        });
        Ok(api::Empty::new())
    }

    async fn resize_pty(
        &self,
        _: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let (client, ctx) = self.pod.agent_for(&req.id).map_err(status)?.raw_owned();
        client
            .resize_tty(
                ctx,
                &ag::ResizeTtyRequest {
                    container_id: req.id,
                    exec_id: req.exec_id,
                    rows: req.height,
                    cols: req.width,
                    ..Default::default()
                },
            )
            .await
            .map_err(agent_status("ResizeTty"))?;
        Ok(api::Empty::new())
    }

    async fn close_io(
        &self,
        _: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        if req.stdin {
            self.pod
                .close_stdin(&req.id, &req.exec_id)
                .await
                .map_err(status)?;
        }
        Ok(api::Empty::new())
    }

    async fn update(
        &self,
        _: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let resources = any_json(&req.resources, "resources")?;
        let (client, ctx) = self.pod.agent_for(&req.id).map_err(status)?.raw_owned();
        client
            .update_container(
                ctx,
                &ag::UpdateContainerRequest {
                    container_id: req.id,
                    resources_json: resources,
                    ..Default::default()
                },
            )
            .await
            .map_err(agent_status("UpdateContainer"))?;
        Ok(api::Empty::new())
    }

    async fn wait(
        &self,
        _: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let p = self
            .pod
            .container(&req.id)
            .and_then(|c| c.process(&req.exec_id))
            .map_err(status)?;
        let e = p.wait().await;
        Ok(api::WaitResponse {
            exit_status: e.status,
            exited_at: MessageField::some(e.at),
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        use containerd_shim::protos::cgroups_v2::metrics::{
            CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
        };
        let (client, ctx) = self.pod.agent_for(&req.id).map_err(status)?.raw_owned();
        let s = client
            .stats_container(
                ctx,
                &ag::ContainerRequest {
                    container_id: req.id,
                    ..Default::default()
                },
            )
            .await
            .map_err(agent_status("StatsContainer"))?;
        let m = Metrics {
            pids: MessageField::some(PidsStat {
                current: s.pids_current,
                limit: s.pids_limit,
                ..Default::default()
            }),
            cpu: MessageField::some(CPUStat {
                usage_usec: s.cpu_usage_usec,
                user_usec: s.cpu_user_usec,
                system_usec: s.cpu_system_usec,
                nr_periods: s.cpu_nr_periods,
                nr_throttled: s.cpu_nr_throttled,
                throttled_usec: s.cpu_throttled_usec,
                ..Default::default()
            }),
            memory: MessageField::some(MemoryStat {
                usage: s.memory_usage_bytes,
                usage_limit: s.memory_limit_bytes,
                ..Default::default()
            }),
            memory_events: MessageField::some(MemoryEvents {
                oom_kill: s.memory_oom_kill,
                ..Default::default()
            }),
            io: MessageField::some(IOStat {
                usage: vec![IOEntry {
                    rbytes: s.io_read_bytes,
                    wbytes: s.io_write_bytes,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let any = containerd_shim::util::convert_to_any(Box::new(m)).map_err(|e| {
            status(PodError::Io {
                what: "encoding metrics".into(),
                source: std::io::Error::other(e.to_string()),
            })
        })?;
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self
            .pod
            .container(&req.id)
            .map(|c| c.init.pid())
            .unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, _: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if self.pod.is_empty() {
            self.pod.stop_vm().await;
            // The last task's events must reach containerd before the shim exits.
            self.events.flush(std::time::Duration::from_secs(5)).await;
            self.exit.signal();
        }
        Ok(api::Empty::new())
    }
}
