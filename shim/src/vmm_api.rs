//! A client of hull-vmm's control socket (`--api-sock`): one JSON request per line, one JSON
//! reply per line (the protocol is documented in hull-vmm's `api::protocol`).
//!
//! Blocking and small on purpose: requests are rare and answered at once. Used by
//! `hull bench vmm`; the hull-vmm backend will use it to pause, stop and inspect VMs. It does
//! not start or supervise hull-vmm.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

/// The longest reply accepted (a `metrics` reply is well under 1 KiB).
const MAX_REPLY: u64 = 64 * 1024;

/// Errors of talking to the control socket.
#[derive(Debug, Error)]
pub enum VmmApiError {
    /// The socket could not be reached.
    #[error("connecting to {path}: {source}")]
    Connect {
        /// The socket.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Sending or receiving failed (or timed out).
    #[error("control socket I/O: {0}")]
    Io(#[from] std::io::Error),
    /// hull-vmm closed the connection without replying.
    #[error("hull-vmm closed the control socket without a reply")]
    Closed,
    /// The reply is not what the protocol says.
    #[error("malformed reply {reply:?}: {message}")]
    Malformed {
        /// The reply line.
        reply: String,
        /// What was wrong.
        message: String,
    },
    /// hull-vmm refused the request.
    #[error("hull-vmm refused {cmd}: {message}")]
    Refused {
        /// The command.
        cmd: String,
        /// hull-vmm's error message.
        message: String,
    },
}

/// The `metrics` reply's body (fields this client reads; others are ignored).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct Metrics {
    /// vCPU exits by kind, and their `total`.
    pub vcpu_exits: std::collections::BTreeMap<String, u64>,
    /// vCPU 0's first `KVM_RUN`, once it happened.
    pub first_kvm_run: Option<FirstRun>,
    /// Console bytes the guest wrote.
    pub console_bytes: u64,
    /// vsock traffic counters, if the VM has a vsock device.
    pub vsock: Option<std::collections::BTreeMap<String, u64>>,
}

/// When hull-vmm's vCPU 0 first entered the guest.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct FirstRun {
    /// `CLOCK_MONOTONIC`, ns.
    pub monotonic_ns: u64,
    /// µs since hull-vmm's `main`.
    pub since_start_us: u64,
    /// hull-vmm's CPU time (user + system, all threads), µs.
    pub process_cpu_us: u64,
}

#[derive(Debug, Deserialize)]
struct Reply {
    ok: bool,
    error: Option<String>,
    state: Option<String>,
    metrics: Option<Metrics>,
}

/// A connection to one hull-vmm's control socket.
#[derive(Debug)]
pub struct VmmApi {
    conn: BufReader<UnixStream>,
}

impl VmmApi {
    /// Connects to the socket at `path`; every request then waits at most `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, VmmApiError> {
        let s = UnixStream::connect(path).map_err(|source| VmmApiError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(VmmApi {
            conn: BufReader::new(s),
        })
    }

    fn request(&mut self, cmd: &str) -> Result<Reply, VmmApiError> {
        self.conn
            .get_mut()
            .write_all(format!("{{\"cmd\":\"{cmd}\"}}\n").as_bytes())?;
        let mut line = String::new();
        (&mut self.conn).take(MAX_REPLY).read_line(&mut line)?;
        if line.is_empty() {
            return Err(VmmApiError::Closed);
        }
        let reply: Reply =
            serde_json::from_str(line.trim_end()).map_err(|e| VmmApiError::Malformed {
                reply: line.clone(),
                message: e.to_string(),
            })?;
        if !reply.ok {
            return Err(VmmApiError::Refused {
                cmd: cmd.to_string(),
                message: reply.error.unwrap_or_default(),
            });
        }
        Ok(reply)
    }

    /// Parks every vCPU.
    pub fn pause(&mut self) -> Result<(), VmmApiError> {
        self.request("pause").map(drop)
    }

    /// Lets the vCPUs run again.
    pub fn resume(&mut self) -> Result<(), VmmApiError> {
        self.request("resume").map(drop)
    }

    /// Ends the VM; hull-vmm exits with status 0 after replying.
    pub fn shutdown(&mut self) -> Result<(), VmmApiError> {
        self.request("shutdown").map(drop)
    }

    /// `running`, `pausing`, `paused` or `stopped`.
    pub fn state(&mut self) -> Result<String, VmmApiError> {
        let r = self.request("state")?;
        r.state.ok_or_else(|| VmmApiError::Malformed {
            reply: "state".into(),
            message: "no state field".into(),
        })
    }

    /// The counters.
    pub fn metrics(&mut self) -> Result<Metrics, VmmApiError> {
        let r = self.request("metrics")?;
        r.metrics.ok_or_else(|| VmmApiError::Malformed {
            reply: "metrics".into(),
            message: "no metrics field".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake hull-vmm that answers each request line with the next canned reply.
    fn serve(replies: &'static [&'static str]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s);
            for reply in replies {
                let mut req = String::new();
                if r.read_line(&mut req).unwrap() == 0 {
                    return;
                }
                assert!(
                    req.starts_with("{\"cmd\":\"") && req.ends_with("\"}\n"),
                    "{req}"
                );
                r.get_mut().write_all(reply.as_bytes()).unwrap();
            }
        });
        (dir, path)
    }

    #[test]
    fn replies_are_decoded_and_refusals_are_errors() {
        let (_d, path) = serve(&[
            "{\"ok\":true,\"state\":\"paused\",\"uptime_ms\":5,\"vcpus\":1}\n",
            "{\"ok\":true,\"metrics\":{\"vcpu_exits\":{\"io_out\":3,\"total\":3},\"first_kvm_run\":{\"monotonic_ns\":9,\"since_start_us\":2000,\"process_cpu_us\":1500},\"vsock\":null,\"console_bytes\":7}}\n",
            "{\"ok\":false,\"error\":\"only 0 of 1 vCPUs parked\"}\n",
            "not json\n",
        ]);
        let mut api = VmmApi::connect(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(api.state().unwrap(), "paused");
        let m = api.metrics().unwrap();
        assert_eq!(m.vcpu_exits["total"], 3);
        assert_eq!(m.first_kvm_run.unwrap().process_cpu_us, 1500);
        assert_eq!(m.console_bytes, 7);
        let e = api.pause().unwrap_err().to_string();
        assert!(e.contains("refused pause: only 0 of 1"), "{e}");
        assert!(matches!(
            api.resume().unwrap_err(),
            VmmApiError::Malformed { .. }
        ));
        // The fake hung up: no reply (or the write already fails).
        assert!(matches!(
            api.shutdown().unwrap_err(),
            VmmApiError::Closed | VmmApiError::Io(_)
        ));
    }
}
