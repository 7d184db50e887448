//! Announces readiness to the host: once the ttrpc server listens, the agent connects to the
//! host's vsock port [`READY_VSOCK_PORT`] and writes one line,
//! `HULL-AGENT-READY <agent version>\n`.
//!
//! Guest-initiated on purpose: the host must not `CONNECT` before the guest's vsock driver
//! is up (vhost-device-vsock 0.3 loses the VM's vsock for good on that race), and this is
//! also the cheapest "agent ready" signal. The host side is the shim's `vsock` module.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

use hull_protocol::{HOST_CID, READY_MAGIC, READY_VSOCK_PORT};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};

/// The line written on the readiness connection.
pub fn ready_line() -> String {
    format!("{READY_MAGIC} {}\n", env!("CARGO_PKG_VERSION"))
}

fn announce_once() -> std::io::Result<()> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(fd.as_raw_fd(), &VsockAddr::new(HOST_CID, READY_VSOCK_PORT))?;
    let mut stream = std::fs::File::from(fd);
    stream.write_all(ready_line().as_bytes())
}

/// Connects to the host and announces readiness, retrying for up to ~10 s (the host
/// listens before the VM starts, so a retry only covers a slow vsock device).
pub async fn announce() {
    let mut delay = Duration::from_millis(5);
    for attempt in 1..=40 {
        match tokio::task::spawn_blocking(announce_once).await {
            Ok(Ok(())) => {
                log::info!("announced readiness to the host (attempt {attempt})");
                return;
            }
            Ok(Err(e)) => log::debug!("readiness announce attempt {attempt}: {e}"),
            Err(e) => log::warn!("readiness announce task: {e}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
    log::error!("could not reach the host on vsock port {READY_VSOCK_PORT}; serving anyway");
}

#[cfg(test)]
mod tests {
    #[test]
    fn ready_line_is_one_line_with_the_version() {
        let l = super::ready_line();
        assert!(l.starts_with("HULL-AGENT-READY "));
        assert!(l.ends_with('\n'));
        assert_eq!(l.matches('\n').count(), 1);
    }
}
