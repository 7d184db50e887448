//! Bridges containerd's stdio (named FIFOs, as `ctr` and the CRI plugin create them, or the
//! log URIs of [`super::logging`]) to the agent's stdio streams (one vsock stream per
//! process stream).
//!
//! Output: agent stream → FIFO (or log file or logging binary), until the agent closes the stream after the process's last
//! byte. Input: FIFO → agent stream, until the writer closes the FIFO (then the stream's
//! write half is shut, which the agent turns into EOF on the process's stdin).

use std::path::Path;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;

use super::logging::Writer;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

/// Copies `stream` to `out` (a FIFO, a log file or a logging binary's pipe, see
/// [`super::logging`]) until EOF; then `out` is closed.
pub fn copy_output(stream: UnixStream, mut out: Writer) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (mut rd, _wr) = stream.into_split();
        if let Err(e) = tokio::io::copy(&mut rd, &mut out).await {
            log::debug!("copying output: {e}");
        }
        let _ = out.flush().await;
    })
}

/// Copies the FIFO at `path` to `stream` until the FIFO's writer closes it.
pub fn fifo_to_input(stream: UnixStream, path: &Path) -> JoinHandle<()> {
    let path = path.to_path_buf();
    tokio::spawn(async move {
        // A plain read-only open waits for the writer, as containerd expects; EOF then
        // means the writer is done.
        let opened = tokio::task::spawn_blocking({
            let path = path.clone();
            move || std::fs::File::open(path)
        })
        .await;
        let file = match opened {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => return log::warn!("opening stdin {}: {e}", path.display()),
            Err(e) => return log::warn!("opening stdin {}: {e}", path.display()),
        };
        let fifo = match pipe::Receiver::from_file(file) {
            Ok(f) => f,
            Err(e) => return log::warn!("stdin {}: {e}", path.display()),
        };
        let (_rd, mut wr) = stream.into_split();
        let mut fifo = fifo;
        if let Err(e) = tokio::io::copy(&mut fifo, &mut wr).await {
            log::debug!("copying stdin from {}: {e}", path.display());
        }
        let _ = wr.shutdown().await;
    })
}

/// Releases a [`fifo_to_input`] still waiting for the FIFO's writer (a client that never
/// opened stdin): briefly becoming that writer completes the open, and the reader then sees
/// EOF. Without it the blocked open would pin a thread for the shim's lifetime.
pub fn unblock_fifo_open(path: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path);
}
