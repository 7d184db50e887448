//! The `hull.agent.v1.Agent` ttrpc service: health, identity and shutdown of the guest.
//!
//! Handlers are thin: log, call a `do_x()` that returns a typed error, convert the error to a
//! ttrpc status with a meaningful code. Container RPCs are not part of this service yet.

use std::sync::Arc;

use async_trait::async_trait;
use hull_protocol::agent::{check_response::ServingStatus, *};
use hull_protocol::agent_ttrpc::Agent;
use thiserror::Error;
use tokio::sync::mpsc;
use ttrpc::r#async::TtrpcContext;

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
}

impl AgentService {
    /// A service that sends on `shutdown_tx` when asked to shut down.
    pub fn new(pid1: bool, shutdown_tx: mpsc::Sender<ShutdownAction>) -> Arc<Self> {
        Arc::new(AgentService { pid1, shutdown_tx })
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
        let v = AgentService::new(false, tx).do_version().unwrap();
        let uts = nix::sys::utsname::uname().unwrap();
        assert_eq!(v.kernel_release, uts.release().to_str().unwrap());
        assert_eq!(v.protocol_major, hull_protocol::PROTOCOL_MAJOR);
        assert!(!v.pid1);
        assert!(v.uptime_seconds > 0.0);
    }

    #[test]
    fn a_second_shutdown_is_a_failed_precondition() {
        let (tx, mut rx) = mpsc::channel(1);
        let svc = AgentService::new(false, tx);
        svc.do_shutdown().unwrap();
        let err = svc.do_shutdown().unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::FAILED_PRECONDITION);
        assert_eq!(rx.try_recv().unwrap(), ShutdownAction::ExitProcess);
    }
}
