//! The host's client of hull-agent: a ttrpc connection over hybrid vsock with a deadline on
//! every call, and validation of what the agent answers.
//!
//! The guest is hostile: replies are checked (protocol version, field sizes) before anyone
//! uses them. This module does not know how the VM was started.

use std::path::Path;
use std::time::Duration;

use hull_protocol::agent::*;
use hull_protocol::agent_ttrpc::AgentClient;
use hull_protocol::{AGENT_VSOCK_PORT, PROTOCOL_MAJOR, STDIO_VSOCK_PORT};
use thiserror::Error;

use crate::vsock::{self, VsockError};

/// Longest kernel release / version string accepted from the guest.
const MAX_IDENT: usize = 64;

/// Errors talking to the agent.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The vsock connection could not be made.
    #[error("connecting to the agent: {0}")]
    Connect(#[from] VsockError),
    /// The RPC failed (transport error, deadline, or an error status from the agent).
    #[error("agent {rpc}: {source}")]
    Rpc {
        /// The RPC's name.
        rpc: &'static str,
        /// The underlying error.
        source: ttrpc::Error,
    },
    /// The agent answered something this host cannot accept.
    #[error("agent {rpc} reply rejected: {reason}")]
    BadReply {
        /// The RPC's name.
        rpc: &'static str,
        /// What was wrong.
        reason: String,
    },
}

/// A connection to one VM's agent.
#[derive(Clone)]
pub struct Agent {
    client: AgentClient,
    timeout: Duration,
    uds: std::path::PathBuf,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Connects to the agent through the VM's hybrid vsock socket `uds`. `timeout` bounds
    /// the handshake and every later call.
    pub async fn connect(uds: &Path, timeout: Duration) -> Result<Agent, AgentError> {
        let stream = vsock::connect(uds, AGENT_VSOCK_PORT, timeout).await?;
        let client = ttrpc::r#async::Client::new(ttrpc::r#async::transport::Socket::from(stream));
        Ok(Agent {
            client: AgentClient::new(client),
            timeout,
            uds: uds.to_path_buf(),
        })
    }

    /// The generated client and a context with this connection's deadline, for RPCs that
    /// have no typed wrapper here.
    pub fn raw(&self) -> (&AgentClient, ttrpc::context::Context) {
        (&self.client, self.ctx())
    }

    /// Like [`Agent::raw`], consuming the agent (for handlers that own a clone).
    pub fn raw_owned(self) -> (AgentClient, ttrpc::context::Context) {
        let ctx = self.ctx();
        (self.client, ctx)
    }

    /// Opens the stdio stream `id` to the agent (a new vsock connection to
    /// [`STDIO_VSOCK_PORT`] that starts with `STREAM <id>\n`). Name it in the request that
    /// uses it afterwards.
    pub async fn open_stream(&self, id: &str) -> Result<tokio::net::UnixStream, AgentError> {
        use tokio::io::AsyncWriteExt;
        let mut s = vsock::connect(&self.uds, STDIO_VSOCK_PORT, self.timeout).await?;
        s.write_all(format!("STREAM {id}\n").as_bytes())
            .await
            .map_err(|source| VsockError::Io {
                port: STDIO_VSOCK_PORT,
                source,
            })?;
        Ok(s)
    }

    fn ctx(&self) -> ttrpc::context::Context {
        ttrpc::context::with_timeout(self.timeout.as_nanos().min(i64::MAX as u128) as i64)
    }

    /// `Check`: the agent is serving.
    pub async fn check(&self) -> Result<(), AgentError> {
        let r = self
            .client
            .check(self.ctx(), &CheckRequest::new())
            .await
            .map_err(|source| AgentError::Rpc {
                rpc: "Check",
                source,
            })?;
        match r.status.enum_value() {
            Ok(check_response::ServingStatus::SERVING) => Ok(()),
            other => Err(AgentError::BadReply {
                rpc: "Check",
                reason: format!("status {other:?}"),
            }),
        }
    }

    /// `Version`: the agent's and guest kernel's identity, validated.
    pub async fn version(&self) -> Result<VersionResponse, AgentError> {
        let r = self
            .client
            .version(self.ctx(), &VersionRequest::new())
            .await
            .map_err(|source| AgentError::Rpc {
                rpc: "Version",
                source,
            })?;
        validate_version(&r).map_err(|reason| AgentError::BadReply {
            rpc: "Version",
            reason,
        })?;
        Ok(r)
    }

    /// `Shutdown`: the guest syncs and reboots, which ends the VM.
    pub async fn shutdown(&self) -> Result<(), AgentError> {
        self.client
            .shutdown(self.ctx(), &ShutdownRequest::new())
            .await
            .map_err(|source| AgentError::Rpc {
                rpc: "Shutdown",
                source,
            })?;
        Ok(())
    }
}

fn printable_ident(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_IDENT || !s.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "{what} {:?} is not a short printable identifier",
            s.chars().take(MAX_IDENT).collect::<String>()
        ));
    }
    Ok(())
}

/// Checks a `Version` reply from the guest.
pub fn validate_version(v: &VersionResponse) -> Result<(), String> {
    if v.protocol_major != PROTOCOL_MAJOR {
        return Err(format!(
            "agent speaks protocol v{}.{}, this host speaks v{PROTOCOL_MAJOR}",
            v.protocol_major, v.protocol_minor
        ));
    }
    printable_ident("kernel release", &v.kernel_release)?;
    printable_ident("agent version", &v.agent_version)?;
    if !v.uptime_seconds.is_finite() || v.uptime_seconds < 0.0 {
        return Err(format!("uptime {} is not a duration", v.uptime_seconds));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> VersionResponse {
        VersionResponse {
            agent_version: "0.1.0".into(),
            protocol_major: PROTOCOL_MAJOR,
            kernel_release: "6.1.192-hull".into(),
            uptime_seconds: 0.8,
            pid1: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_well_formed_version_passes() {
        validate_version(&good()).unwrap();
    }

    #[test]
    fn hostile_versions_are_rejected_with_a_reason() {
        let mut v = good();
        v.protocol_major = 2;
        assert!(validate_version(&v).unwrap_err().contains("protocol v2"));
        let mut v = good();
        v.kernel_release = "x".repeat(4096);
        assert!(validate_version(&v).unwrap_err().contains("kernel release"));
        let mut v = good();
        v.kernel_release = "6.1\n\x1b[2J".into();
        assert!(validate_version(&v).is_err());
        let mut v = good();
        v.agent_version = String::new();
        assert!(validate_version(&v).unwrap_err().contains("agent version"));
        let mut v = good();
        v.uptime_seconds = f64::NAN;
        assert!(validate_version(&v).is_err());
    }
}
