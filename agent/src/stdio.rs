//! Wiring a process's stdio to its streams: pipes (or a pty) on the process side, copy
//! tasks to the host's streams on the agent side.
//!
//! Output copiers end when the process side closes (all writers gone) and then shut the
//! stream's write half, so the host sees EOF after the last byte. `WaitProcess` waits for
//! them: no tail of output is lost when a process exits.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::streams::Stream;

/// The process-side file descriptors and the agent-side copy tasks of one process.
#[derive(Debug)]
pub struct Wiring {
    /// Given to the process as fds 0, 1, 2.
    pub child: [OwnedFd; 3],
    /// Output copiers (stdout, stderr); done when all output reached the host.
    pub output: Vec<JoinHandle<()>>,
    /// The stdin copier; aborting it closes the process's stdin.
    pub input: Option<JoinHandle<()>>,
}

fn dev_null() -> std::io::Result<OwnedFd> {
    Ok(File::options()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into())
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// Copies `from` to `to` until EOF, then shuts `to` down.
async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut from: R,
    mut to: W,
    what: &'static str,
) {
    if let Err(e) = tokio::io::copy(&mut from, &mut to).await {
        log::debug!("{what}: {e}");
    }
    let _ = to.shutdown().await;
}

/// Pipes for a process without a terminal. A stream that is not given becomes /dev/null.
pub fn pipes(
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
) -> std::io::Result<Wiring> {
    use tokio::net::unix::pipe;
    let mut output = Vec::new();
    let (child_in, input) = match stdin {
        Some(stream) => {
            let (r, w) = pipe()?;
            let w = pipe::Sender::from_owned_fd(w)?;
            (r, Some(tokio::spawn(pump(stream, w, "stdin"))))
        }
        None => (dev_null()?, None),
    };
    let mut out_fd = |stream: Option<Stream>, what: &'static str| -> std::io::Result<OwnedFd> {
        match stream {
            Some(stream) => {
                let (r, w) = pipe()?;
                let r = pipe::Receiver::from_owned_fd(r)?;
                output.push(tokio::spawn(pump(r, stream, what)));
                Ok(w)
            }
            None => dev_null(),
        }
    };
    let child_out = out_fd(stdout, "stdout")?;
    let child_err = out_fd(stderr, "stderr")?;
    Ok(Wiring {
        child: [child_in, child_out, child_err],
        output,
        input,
    })
}

/// A process's terminal: the copy tasks and the pty master (kept for resizing).
#[derive(Debug)]
pub struct Terminal {
    /// The terminal-output copier.
    pub output: Vec<JoinHandle<()>>,
    /// The stdin copier.
    pub input: Option<JoinHandle<()>>,
    /// The pty master.
    pub master: OwnedFd,
}

/// Wires a pty master (received from the container's console socket) to the streams: the
/// terminal's output goes to `stdout`, `stdin` feeds the terminal.
pub fn terminal(
    master: OwnedFd,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
) -> std::io::Result<Terminal> {
    let keep = master.try_clone()?;
    set_nonblocking(&master)?;
    let reader = register(File::from(master.try_clone()?))?;
    let writer = register(File::from(master))?;
    let output = match stdout {
        Some(out) => vec![tokio::spawn(pump(PtyIo(reader), out, "tty output"))],
        None => vec![],
    };
    let input = stdin.map(|s| tokio::spawn(pump(s, PtyIo(writer), "tty input")));
    Ok(Terminal {
        output,
        input,
        master: keep,
    })
}

fn register(f: File) -> std::io::Result<tokio::io::unix::AsyncFd<File>> {
    // SAFETY: the File owns its fd, which stays open and unchanged until the AsyncFd (which
    // owns the File) is dropped.
    unsafe { tokio::io::unix::AsyncFd::register(f) }
        .map_err(|e| std::io::Error::other(e.to_string()))
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Sets a terminal's size.
pub fn resize(master: &OwnedFd, rows: u16, cols: u16) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which points to a live,
    // initialised local; the fd is an open pty master owned by the caller.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Async I/O on a non-blocking pty master. A pty master reports EIO once the slave side is
/// closed for good; that is its EOF.
struct PtyIo(tokio::io::unix::AsyncFd<File>);

impl AsyncRead for PtyIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::io::Read;
        use std::task::Poll;
        let me = self.get_mut();
        loop {
            let mut guard = match me.0.poll_read_ready(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|f| f.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::io::Write;
        use std::task::Poll;
        let me = self.get_mut();
        loop {
            let mut guard = match me.0.poll_write_ready(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            match guard.try_io(|f| f.get_ref().write(data)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
