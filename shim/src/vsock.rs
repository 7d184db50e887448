//! Host side of hybrid vsock: the unix-socket protocol every hull backend exposes for the
//! guest's vsock device (vhost-device-vsock for QEMU, hull-vmm's own device later).
//!
//! * Host → guest: connect to the VM's vsock unix socket, send `CONNECT <port>\n`, read one
//!   reply line; a reply starting with `OK ` means the stream is now connected to the guest
//!   port. vhost-device-vsock answers `OK <host-side port>`, so only the prefix is checked.
//! * Guest → host: a guest connection to host port P arrives on the unix socket
//!   `<vsock socket path>_P`, which the host must be listening on.
//!
//! Everything read here comes from outside the host's trust boundary, so reads are bounded
//! and parsed without panics. This module knows nothing of ttrpc.

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Longest reply or announcement line accepted, including the newline.
pub const MAX_LINE: usize = 128;

/// Errors of the hybrid vsock handshake.
#[derive(Debug, Error)]
pub enum VsockError {
    /// Connecting to the VM's vsock unix socket failed.
    #[error("connecting to the vsock socket {path}: {source}")]
    Connect {
        /// The unix socket.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Reading or writing the handshake failed.
    #[error("vsock handshake for port {port}: {source}")]
    Io {
        /// The guest port.
        port: u32,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The handshake did not finish in time.
    #[error("vsock handshake for port {port} timed out after {timeout:?}")]
    Timeout {
        /// The guest port.
        port: u32,
        /// How long we waited.
        timeout: Duration,
    },
    /// The peer closed the connection or sent something that is not a valid reply.
    #[error("vsock handshake for port {port}: {reason}")]
    Refused {
        /// The guest port.
        port: u32,
        /// What was wrong with the reply.
        reason: String,
    },
    /// Listening for guest-initiated connections failed.
    #[error("listening on {path}: {source}")]
    Listen {
        /// The unix socket.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Why a line read from the peer is not acceptable.
#[derive(Debug, PartialEq, Eq, Error)]
pub enum LineError {
    /// The peer closed before a newline.
    #[error("connection closed before a complete line ({0} bytes)")]
    Closed(usize),
    /// No newline within [`MAX_LINE`] bytes.
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    /// The line is not UTF-8.
    #[error("line is not UTF-8")]
    NotUtf8,
}

/// Reads one `\n`-terminated line of at most [`MAX_LINE`] bytes, one byte at a time so that
/// nothing after the newline (the start of the ttrpc stream) is consumed.
pub async fn read_line<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Result<String, LineError>> {
    let mut buf = Vec::with_capacity(32);
    loop {
        let mut b = [0u8; 1];
        if r.read(&mut b).await? == 0 {
            return Ok(Err(LineError::Closed(buf.len())));
        }
        if b[0] == b'\n' {
            return Ok(String::from_utf8(buf).map_err(|_| LineError::NotUtf8));
        }
        if buf.len() + 1 >= MAX_LINE {
            return Ok(Err(LineError::TooLong));
        }
        buf.push(b[0]);
    }
}

/// Checks a `CONNECT` reply line (without its newline): `OK ` followed by anything.
pub fn check_connect_reply(line: &str) -> Result<(), String> {
    if line.starts_with("OK ") {
        Ok(())
    } else {
        Err(format!(
            "unexpected reply {:?}",
            line.chars().take(64).collect::<String>()
        ))
    }
}

/// Connects to the unix socket at `path` only if that name is a socket itself, not a
/// symlink: the directory may belong to a pod's own uid (its vsock daemon creates the socket
/// there), and a daemon the guest took over must not point the root shim at any other socket
/// on the host. The name is opened once without following (`O_PATH | O_NOFOLLOW`) and the
/// connection made through that descriptor (`/proc/self/fd/N` reaches the very inode), so
/// the name cannot be swapped in between.
pub async fn connect_socket_file(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a NUL-terminated path; open with O_PATH reads nothing else.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened by us and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = std::fs::File::from(fd);
    use std::os::unix::fs::FileTypeExt;
    // With O_PATH, O_NOFOLLOW opens a symlink itself rather than failing.
    let kind = file.metadata()?.file_type();
    if !kind.is_socket() {
        let what = if kind.is_symlink() {
            "is a symlink, not the socket (refused)"
        } else {
            "is not a unix socket (refused)"
        };
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, what));
    }
    UnixStream::connect(format!("/proc/self/fd/{}", file.as_raw_fd())).await
}

/// Connects to guest `port` through the hybrid vsock socket at `uds`.
pub async fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, VsockError> {
    let handshake = async {
        let mut s = connect_socket_file(uds)
            .await
            .map_err(|source| VsockError::Connect {
                path: uds.to_path_buf(),
                source,
            })?;
        s.write_all(format!("CONNECT {port}\n").as_bytes())
            .await
            .map_err(|source| VsockError::Io { port, source })?;
        let line = read_line(&mut s)
            .await
            .map_err(|source| VsockError::Io { port, source })?
            .map_err(|e| VsockError::Refused {
                port,
                reason: e.to_string(),
            })?;
        check_connect_reply(&line).map_err(|reason| VsockError::Refused { port, reason })?;
        Ok(s)
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| VsockError::Timeout { port, timeout })?
}

/// The unix socket on which guest connections to host `port` arrive.
pub fn guest_initiated_path(uds: &Path, port: u32) -> PathBuf {
    let mut p = uds.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// Listens for guest-initiated connections to host `port` of the VM whose hybrid vsock
/// socket is `uds`. Bind this before the VM starts.
pub fn listen(uds: &Path, port: u32) -> Result<UnixListener, VsockError> {
    let path = guest_initiated_path(uds, port);
    UnixListener::bind(&path).map_err(|source| VsockError::Listen { path, source })
}

/// Parses the agent's readiness line (without newline): `HULL-AGENT-READY <version>`.
/// Returns the agent version.
pub fn parse_ready_line(line: &str) -> Result<&str, String> {
    let rest = line
        .strip_prefix(hull_protocol::READY_MAGIC)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| {
            format!(
                "not a readiness line: {:?}",
                line.chars().take(64).collect::<String>()
            )
        })?;
    if rest.is_empty()
        || rest.len() > 32
        || !rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-+_".contains(c))
    {
        return Err(format!("bad agent version in readiness line: {rest:?}"));
    }
    Ok(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_a_socket_itself_is_connected_never_a_symlink_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("vsock.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let mut c = connect_socket_file(&sock).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        c.write_all(b"hi").await.unwrap();
        let mut b = [0u8; 2];
        use tokio::io::AsyncReadExt;
        server.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"hi");
        // What a taken-over daemon could put in its place: a link to another socket.
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&sock, &link).unwrap();
        let e = connect_socket_file(&link).await.unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let e = connect_socket_file(&file).await.unwrap_err();
        assert!(e.to_string().contains("not a unix socket"), "{e}");
        let e = connect_socket_file(&dir.path().join("none"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn only_ok_replies_are_accepted() {
        assert!(check_connect_reply("OK 1073741824").is_ok());
        assert!(check_connect_reply("OK ").is_ok());
        assert!(check_connect_reply("OK").is_err());
        assert!(check_connect_reply("").is_err());
        assert!(check_connect_reply("ERR no listener").is_err());
        assert!(check_connect_reply("ok 5").is_err());
    }

    #[test]
    fn ready_lines_are_validated() {
        assert_eq!(parse_ready_line("HULL-AGENT-READY 0.1.0"), Ok("0.1.0"));
        assert!(parse_ready_line("HULL-AGENT-READY").is_err());
        assert!(parse_ready_line("HULL-AGENT-READY ").is_err());
        assert!(parse_ready_line("HULL-AGENT-READY 1 2").is_err());
        assert!(parse_ready_line("hello").is_err());
        assert!(parse_ready_line(&format!("HULL-AGENT-READY {}", "9".repeat(40))).is_err());
    }

    #[test]
    fn guest_initiated_path_appends_the_port() {
        assert_eq!(
            guest_initiated_path(Path::new("/run/hull/x/vsock.sock"), 1025),
            Path::new("/run/hull/x/vsock.sock_1025")
        );
    }

    #[tokio::test]
    async fn read_line_stops_at_newline_and_bounds_length() {
        let mut data: &[u8] = b"OK 5\nrest";
        assert_eq!(read_line(&mut data).await.unwrap(), Ok("OK 5".to_string()));
        assert_eq!(data, b"rest", "bytes after the newline must stay unread");

        let long = vec![b'a'; 1000];
        assert_eq!(
            read_line(&mut &long[..]).await.unwrap(),
            Err(LineError::TooLong)
        );
        assert_eq!(
            read_line(&mut &b"OK"[..]).await.unwrap(),
            Err(LineError::Closed(2))
        );
        assert_eq!(
            read_line(&mut &b"\xff\xfe\n"[..]).await.unwrap(),
            Err(LineError::NotUtf8)
        );
    }

    /// A fake hybrid-vsock endpoint: answers `reply` to the first CONNECT, then echoes.
    async fn fake_endpoint(
        reply: &'static [u8],
    ) -> (tempfile::TempDir, PathBuf, tokio::task::JoinHandle<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let req = read_line(&mut s).await.unwrap().unwrap();
            s.write_all(reply).await.unwrap();
            let mut buf = [0u8; 4];
            if s.read_exact(&mut buf).await.is_ok() {
                s.write_all(&buf).await.unwrap();
            }
            req
        });
        (dir, path, task)
    }

    #[tokio::test]
    async fn connect_sends_the_port_and_hands_over_the_stream() {
        let (_dir, path, task) = fake_endpoint(b"OK 99\n").await;
        let mut s = connect(&path, 1024, Duration::from_secs(5)).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert_eq!(task.await.unwrap(), "CONNECT 1024");
    }

    #[tokio::test]
    async fn a_refusal_names_the_port_and_reply() {
        let (_dir, path, _task) = fake_endpoint(b"NOPE\n").await;
        let err = connect(&path, 1024, Duration::from_secs(5))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("1024") && msg.contains("NOPE"), "{msg}");
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let err = connect(&path, 7, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, VsockError::Timeout { port: 7, .. }), "{err}");
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_error_naming_the_path() {
        let err = connect(
            Path::new("/nonexistent/vsock.sock"),
            1,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vsock.sock"));
    }
}
