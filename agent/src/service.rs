//! The `hull.agent.v1.Agent` ttrpc service: health, identity and shutdown of the guest, and
//! the sandbox's containers.
//!
//! Handlers are thin: log, call a typed operation (here or in [`crate::sandbox`]), convert the
//! error to a ttrpc status with a meaningful code.

use std::sync::Arc;

use async_trait::async_trait;
use hull_protocol::agent::{check_response::ServingStatus, *};
use hull_protocol::agent_ttrpc::Agent;
use hull_protocol::protobuf;
use thiserror::Error;
use tokio::sync::mpsc;
use ttrpc::r#async::TtrpcContext;

use crate::sandbox::{Sandbox, SandboxError};

/// Errors of the agent service's operations.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// Reading the guest's identity failed.
    #[error("reading {what}: {source}")]
    Identity {
        /// What was being read.
        what: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The agent is already shutting down.
    #[error("the agent is already shutting down")]
    ShuttingDown,
}

impl ServiceError {
    fn code(&self) -> ttrpc::Code {
        match self {
            ServiceError::Identity { .. } => ttrpc::Code::INTERNAL,
            ServiceError::ShuttingDown => ttrpc::Code::FAILED_PRECONDITION,
        }
    }
}

impl From<ServiceError> for ttrpc::Error {
    fn from(e: ServiceError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

/// What the agent does once `Shutdown` has been answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownAction {
    /// PID 1: sync and reboot the guest, which ends the VM.
    RebootGuest,
    /// Host mode: stop serving and exit the process.
    ExitProcess,
}

/// The agent service state.
#[derive(Debug)]
pub struct AgentService {
    pid1: bool,
    shutdown_tx: mpsc::Sender<ShutdownAction>,
    sandbox: Option<Arc<Sandbox>>,
}

fn status(e: SandboxError) -> ttrpc::Error {
    log::warn!("{e}");
    ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
}

fn streams(s: &protobuf::MessageField<StdioStreams>) -> [&str; 3] {
    match s.as_ref() {
        Some(s) => [s.stdin.as_str(), s.stdout.as_str(), s.stderr.as_str()],
        None => ["", "", ""],
    }
}

impl AgentService {
    /// A service that sends on `shutdown_tx` when asked to shut down. Without a sandbox,
    /// container RPCs answer FAILED_PRECONDITION.
    pub fn new(
        pid1: bool,
        shutdown_tx: mpsc::Sender<ShutdownAction>,
        sandbox: Option<Arc<Sandbox>>,
    ) -> Arc<Self> {
        Arc::new(AgentService {
            pid1,
            shutdown_tx,
            sandbox,
        })
    }

    fn sandbox(&self) -> ttrpc::Result<&Arc<Sandbox>> {
        self.sandbox.as_ref().ok_or_else(|| {
            status(SandboxError::FailedPrecondition(
                "this agent runs no containers".into(),
            ))
        })
    }

    fn do_version(&self) -> Result<VersionResponse, ServiceError> {
        let uts = nix::sys::utsname::uname().map_err(|e| ServiceError::Identity {
            what: "uname",
            source: e.into(),
        })?;
        let uptime =
            std::fs::read_to_string("/proc/uptime").map_err(|source| ServiceError::Identity {
                what: "/proc/uptime",
                source,
            })?;
        Ok(VersionResponse {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            protocol_major: hull_protocol::PROTOCOL_MAJOR,
            protocol_minor: hull_protocol::PROTOCOL_MINOR,
            kernel_release: uts.release().to_string_lossy().into_owned(),
            pid1: self.pid1,
            uptime_seconds: parse_uptime(&uptime).unwrap_or(0.0),
            ..Default::default()
        })
    }

    fn do_shutdown(&self) -> Result<(), ServiceError> {
        let action = if self.pid1 {
            // Flush before answering: once the host has the reply it may kill the VM.
            nix::unistd::sync();
            ShutdownAction::RebootGuest
        } else {
            ShutdownAction::ExitProcess
        };
        self.shutdown_tx
            .try_send(action)
            .map_err(|_| ServiceError::ShuttingDown)
    }
}

/// The first field of `/proc/uptime` (seconds since boot).
pub fn parse_uptime(content: &str) -> Option<f64> {
    content.split_whitespace().next()?.parse().ok()
}

#[async_trait]
impl Agent for AgentService {
    async fn check(&self, _: &TtrpcContext, _: CheckRequest) -> ttrpc::Result<CheckResponse> {
        log::debug!("Check");
        Ok(CheckResponse {
            status: ServingStatus::SERVING.into(),
            ..Default::default()
        })
    }

    async fn version(&self, _: &TtrpcContext, _: VersionRequest) -> ttrpc::Result<VersionResponse> {
        log::debug!("Version");
        Ok(self.do_version()?)
    }

    async fn shutdown(
        &self,
        _: &TtrpcContext,
        _: ShutdownRequest,
    ) -> ttrpc::Result<ShutdownResponse> {
        log::info!("Shutdown requested");
        self.do_shutdown()?;
        Ok(ShutdownResponse::default())
    }
    async fn create_sandbox(
        &self,
        _: &TtrpcContext,
        r: CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        log::info!(
            "CreateSandbox hostname={:?} share_tag={:?}",
            r.hostname,
            r.share_tag
        );
        self.sandbox()?
            .setup(&r.hostname, &r.resolv_conf, &r.hosts, &r.share_tag)
            .map_err(status)?;
        Ok(Empty::new())
    }

    async fn destroy_sandbox(&self, _: &TtrpcContext, _: Empty) -> ttrpc::Result<Empty> {
        log::info!("DestroySandbox");
        self.sandbox()?.destroy().await.map_err(status)?;
        Ok(Empty::new())
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        r: CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        log::info!("CreateContainer {} rootfs={:?}", r.container_id, r.rootfs);
        let pid = self
            .sandbox()?
            .create(&r.container_id, &r.spec_json, &r.rootfs, streams(&r.stdio))
            .await
            .map_err(status)?;
        Ok(CreateContainerResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start_container(&self, _: &TtrpcContext, r: ContainerRequest) -> ttrpc::Result<Empty> {
        log::info!("StartContainer {}", r.container_id);
        self.sandbox()?
            .start(&r.container_id)
            .await
            .map_err(status)?;
        Ok(Empty::new())
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        r: ExecProcessRequest,
    ) -> ttrpc::Result<ExecProcessResponse> {
        log::info!("ExecProcess {}/{}", r.container_id, r.exec_id);
        let pid = self
            .sandbox()?
            .exec(
                &r.container_id,
                &r.exec_id,
                &r.process_json,
                streams(&r.stdio),
            )
            .await
            .map_err(status)?;
        Ok(ExecProcessResponse {
            pid,
            ..Default::default()
        })
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        r: ProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        log::debug!("WaitProcess {}/{}", r.container_id, r.exec_id);
        let (exit, oom) = self
            .sandbox()?
            .wait(&r.container_id, &r.exec_id)
            .await
            .map_err(status)?;
        Ok(WaitProcessResponse {
            exit_status: exit.status,
            signal: exit.signal,
            oom_killed: oom,
            ..Default::default()
        })
    }

    async fn signal_process(
        &self,
        _: &TtrpcContext,
        r: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        log::info!(
            "SignalProcess {}/{} signal={} all={}",
            r.container_id,
            r.exec_id,
            r.signal,
            r.all
        );
        self.sandbox()?
            .signal(&r.container_id, &r.exec_id, r.signal, r.all)
            .await
            .map_err(status)?;
        Ok(Empty::new())
    }

    async fn close_stdin(&self, _: &TtrpcContext, r: ProcessRequest) -> ttrpc::Result<Empty> {
        log::debug!("CloseStdin {}/{}", r.container_id, r.exec_id);
        self.sandbox()?
            .close_stdin(&r.container_id, &r.exec_id)
            .map_err(status)?;
        Ok(Empty::new())
    }

    async fn resize_tty(&self, _: &TtrpcContext, r: ResizeTtyRequest) -> ttrpc::Result<Empty> {
        log::debug!(
            "ResizeTty {}/{} {}x{}",
            r.container_id,
            r.exec_id,
            r.cols,
            r.rows
        );
        self.sandbox()?
            .resize(&r.container_id, &r.exec_id, r.rows, r.cols)
            .map_err(status)?;
        Ok(Empty::new())
    }

    async fn list_processes(
        &self,
        _: &TtrpcContext,
        r: ContainerRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        let pids = self.sandbox()?.pids(&r.container_id).map_err(status)?;
        Ok(ListProcessesResponse {
            pids,
            ..Default::default()
        })
    }

    async fn pause_container(&self, _: &TtrpcContext, r: ContainerRequest) -> ttrpc::Result<Empty> {
        log::info!("PauseContainer {}", r.container_id);
        self.sandbox()?
            .pause(&r.container_id, true)
            .await
            .map_err(status)?;
        Ok(Empty::new())
    }

    async fn resume_container(
        &self,
        _: &TtrpcContext,
        r: ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        log::info!("ResumeContainer {}", r.container_id);
        self.sandbox()?
            .pause(&r.container_id, false)
            .await
            .map_err(status)?;
        Ok(Empty::new())
    }

    async fn update_container(
        &self,
        _: &TtrpcContext,
        r: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        log::info!("UpdateContainer {}", r.container_id);
        self.sandbox()?
            .update(&r.container_id, &r.resources_json)
            .map_err(status)?;
        Ok(Empty::new())
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        r: ContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        let (s, v1, oom_kills) = self.sandbox()?.stats(&r.container_id).map_err(status)?;
        // libcgroups reports CPU time in ns on cgroup v1 and in µs on v2.
        let usec = |v: u64| if v1 { v / 1000 } else { v };
        let sum = |op: &str| -> u64 {
            s.blkio
                .service_bytes
                .iter()
                .filter(|d| {
                    d.op_type
                        .as_deref()
                        .is_some_and(|t| t.eq_ignore_ascii_case(op))
                })
                .map(|d| d.value)
                .sum()
        };
        Ok(StatsContainerResponse {
            cpu_usage_usec: usec(s.cpu.usage.usage_total),
            cpu_user_usec: usec(s.cpu.usage.usage_user),
            cpu_system_usec: usec(s.cpu.usage.usage_kernel),
            cpu_nr_periods: s.cpu.throttling.periods,
            cpu_nr_throttled: s.cpu.throttling.throttled_periods,
            cpu_throttled_usec: usec(s.cpu.throttling.throttled_time),
            memory_usage_bytes: s.memory.memory.usage,
            // cgroups report "no limit" as a huge number.
            memory_limit_bytes: if s.memory.memory.limit >= i64::MAX as u64 / 2 {
                0
            } else {
                s.memory.memory.limit
            },
            memory_oom_kill: oom_kills,
            pids_current: s.pids.current,
            pids_limit: s.pids.limit,
            io_read_bytes: sum("read"),
            io_write_bytes: sum("write"),
            ..Default::default()
        })
    }

    async fn get_oom_event(&self, _: &TtrpcContext, _: Empty) -> ttrpc::Result<OomEvent> {
        let id = self.sandbox()?.next_oom().await.ok_or_else(|| {
            status(SandboxError::FailedPrecondition(
                "the agent is shutting down".into(),
            ))
        })?;
        Ok(OomEvent {
            container_id: id,
            ..Default::default()
        })
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        r: ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        log::info!("RemoveContainer {}", r.container_id);
        self.sandbox()?
            .remove(&r.container_id)
            .await
            .map_err(status)?;
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_is_the_first_field() {
        assert_eq!(parse_uptime("12.34 56.78\n"), Some(12.34));
        assert_eq!(parse_uptime(""), None);
        assert_eq!(parse_uptime("abc 1"), None);
    }

    #[test]
    fn version_reports_this_kernel_and_protocol() {
        let (tx, _rx) = mpsc::channel(1);
        let v = AgentService::new(false, tx, None).do_version().unwrap();
        let uts = nix::sys::utsname::uname().unwrap();
        assert_eq!(v.kernel_release, uts.release().to_str().unwrap());
        assert_eq!(v.protocol_major, hull_protocol::PROTOCOL_MAJOR);
        assert!(!v.pid1);
        assert!(v.uptime_seconds > 0.0);
    }

    #[test]
    fn a_second_shutdown_is_a_failed_precondition() {
        let (tx, mut rx) = mpsc::channel(1);
        let svc = AgentService::new(false, tx, None);
        svc.do_shutdown().unwrap();
        let err = svc.do_shutdown().unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::FAILED_PRECONDITION);
        assert_eq!(rx.try_recv().unwrap(), ShutdownAction::ExitProcess);
    }
}
