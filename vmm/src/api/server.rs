//! The control socket's listener and clients, served from the VMM thread's event loop.
//!
//! [`ApiServer::serve`] waits on one epoll: the listener, every client, and the VM's exit
//! eventfd. It returns the exit reason once the VM ends (the guest's doing, a vCPU error,
//! or a `shutdown` request). Clients are non-blocking; each request line is parsed
//! ([`super::protocol`]) and handed to a [`Handler`], and the reply is written at once.
//! Limits, so that no client can stall or grow the VMM: [`MAX_CLIENTS`] connections (more are
//! closed on accept); a line longer than [`MAX_REQUEST`] gets an error reply and the
//! connection is closed; a client that does not read its replies (the socket buffer is full)
//! is dropped. The socket file is created by [`ApiServer::bind`] (a stale socket there is
//! replaced, any other file is refused; it appears already listening, see [`crate::uds`])
//! and removed when the server is dropped.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::protocol::{parse_request, LineBuffer, Request, Response, MAX_REQUEST};
use crate::vstate::{ExitReason, ExitSignal};

/// Most clients connected at once.
pub const MAX_CLIENTS: usize = 16;
/// Reads from one client per epoll wakeup.
const READS_PER_WAKEUP: usize = 8;

/// Carries out requests (implemented by the running VM).
pub trait Handler {
    /// Handles one request; the reply is sent before the next request is read.
    fn handle(&mut self, req: Request) -> Response;
}

#[derive(Debug)]
struct Client {
    stream: UnixStream,
    lines: LineBuffer,
}

/// The bound control socket and its clients.
#[derive(Debug)]
pub struct ApiServer {
    path: PathBuf,
    /// The socket file's (device, inode), so drop removes only our own file.
    id: (u64, u64),
    listener: UnixListener,
    epoll: Epoll,
    clients: HashMap<RawFd, Client>,
}

/// Epoll token of the exit eventfd (client tokens are their fds, never this large).
const TOKEN_EXIT: u64 = u64::MAX;
/// Epoll token of the listener.
const TOKEN_LISTENER: u64 = u64::MAX - 1;

impl ApiServer {
    /// Binds the control socket at `path`. A stale socket there is replaced; any other
    /// kind of file is an `AlreadyExists` error and is left alone.
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        let listener = crate::uds::bind_listening(path)?;
        let m = std::fs::symlink_metadata(path)?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
        )?;
        Ok(ApiServer {
            path: path.to_path_buf(),
            id: (m.dev(), m.ino()),
            listener,
            epoll,
            clients: HashMap::new(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves clients until `exit` is raised; returns its reason.
    pub fn serve(
        &mut self,
        handler: &mut dyn Handler,
        exit: &ExitSignal,
    ) -> std::io::Result<ExitReason> {
        self.epoll.ctl(
            ControlOperation::Add,
            exit.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_EXIT),
        )?;
        let result = self.event_loop(handler, exit);
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            exit.as_raw_fd(),
            EpollEvent::default(),
        );
        result
    }

    fn event_loop(
        &mut self,
        handler: &mut dyn Handler,
        exit: &ExitSignal,
    ) -> std::io::Result<ExitReason> {
        let mut events = vec![EpollEvent::default(); MAX_CLIENTS + 2];
        loop {
            if let Some(reason) = exit.reason() {
                return Ok(reason);
            }
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            for e in &events[..n] {
                match e.data() {
                    TOKEN_EXIT => {}
                    TOKEN_LISTENER => self.accept_all(),
                    token => {
                        if let Ok(fd) = RawFd::try_from(token) {
                            self.serve_client(fd, handler, exit);
                        }
                    }
                }
                if exit.reason().is_some() {
                    break;
                }
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.clients.len() >= MAX_CLIENTS {
                        log::warn!("api: {MAX_CLIENTS} clients connected; refused one");
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    let added = stream.set_nonblocking(true).and_then(|()| {
                        self.epoll.ctl(
                            ControlOperation::Add,
                            fd,
                            EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, fd as u64),
                        )
                    });
                    match added {
                        Ok(()) => {
                            self.clients.insert(
                                fd,
                                Client {
                                    stream,
                                    lines: LineBuffer::new(),
                                },
                            );
                        }
                        Err(e) => log::warn!("api: accepting a client: {e}"),
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("api: accept: {e}");
                    return;
                }
            }
        }
    }

    fn drop_client(&mut self, fd: RawFd) {
        if self.clients.remove(&fd).is_some() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
    }

    /// Reads what the client sent and answers every complete line; drops the client on
    /// EOF, error, an over-long line or a reply it does not read.
    fn serve_client(&mut self, fd: RawFd, handler: &mut dyn Handler, exit: &ExitSignal) {
        let Some(c) = self.clients.get_mut(&fd) else {
            return;
        };
        let mut buf = [0u8; MAX_REQUEST];
        let mut reads = 0;
        let keep = loop {
            // Fairness: a client that keeps sending yields to the others after a few reads;
            // the level-triggered epoll brings it back.
            reads += 1;
            if reads > READS_PER_WAKEUP {
                break true;
            }
            let n = match c.stream.read(&mut buf) {
                Ok(0) => break false,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break true,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break false,
            };
            let lines = match c.lines.push(&buf[..n]) {
                Ok(lines) => lines,
                // Only an over-long line: we cannot find the next request's start.
                Err(e) => {
                    let _ = c
                        .stream
                        .write_all(&Response::Error(e.to_string()).to_line());
                    break false;
                }
            };
            let mut ok = true;
            for line in lines {
                let reply = match parse_request(&line) {
                    Ok(req) => {
                        log::debug!("api: {req:?}");
                        handler.handle(req)
                    }
                    Err(e) => Response::Error(e.to_string()),
                };
                // Replies are small; a full socket buffer means the client is not reading.
                if c.stream.write_all(&reply.to_line()).is_err() {
                    ok = false;
                    break;
                }
                if exit.reason().is_some() {
                    break;
                }
            }
            if !ok {
                break false;
            }
            if exit.reason().is_some() {
                break true;
            }
        };
        if !keep {
            self.drop_client(fd);
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // Remove the socket only if it is still the one we bound.
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    log::warn!("api: removing {}: {e}", self.path.display());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::sync::Arc;

    /// Counts requests; `shutdown` raises the exit signal like the real VM does.
    struct Fake {
        exit: Arc<ExitSignal>,
        seen: Vec<Request>,
    }

    impl Handler for Fake {
        fn handle(&mut self, req: Request) -> Response {
            self.seen.push(req);
            match req {
                Request::Shutdown => {
                    self.exit.signal(ExitReason::Stopped { by: "test".into() });
                    Response::Done
                }
                Request::State => Response::State {
                    state: "running",
                    uptime_ms: 1,
                    vcpus: 1,
                },
                _ => Response::Done,
            }
        }
    }

    fn ask(r: &mut BufReader<UnixStream>, line: &[u8]) -> serde_json::Value {
        r.get_mut().write_all(line).unwrap();
        let mut reply = String::new();
        r.read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{reply:?}: {e}"))
    }

    #[test]
    fn requests_are_answered_in_order_bad_ones_with_errors_until_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        // A stale socket is replaced.
        drop(UnixListener::bind(&path).unwrap());
        let mut server = ApiServer::bind(&path).unwrap();
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut fake = Fake {
            exit: exit.clone(),
            seen: Vec::new(),
        };
        let p = path.clone();
        let client = std::thread::spawn(move || {
            let mut r = BufReader::new(UnixStream::connect(&p).unwrap());
            let v = ask(&mut r, b"{\"cmd\":\"state\"}\n");
            assert_eq!(
                (v["ok"].as_bool(), v["state"].as_str()),
                (Some(true), Some("running"))
            );
            let v = ask(&mut r, b"{\"cmd\":\"fly\"}\n");
            assert_eq!(v["ok"], false);
            assert!(
                v["error"]
                    .as_str()
                    .unwrap()
                    .contains("unknown variant `fly`"),
                "{v}"
            );
            let v = ask(&mut r, b"\xff\n");
            assert_eq!(v["error"], "request is not UTF-8");
            // Still served after errors; two requests in one write get two replies.
            r.get_mut()
                .write_all(b"{\"cmd\":\"pause\"}\n{\"cmd\":\"resume\"}\n")
                .unwrap();
            for _ in 0..2 {
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                assert_eq!(l, "{\"ok\":true}\n");
            }
            // An over-long line: an error reply, then the server hangs up.
            let mut long = UnixStream::connect(&p).unwrap();
            long.write_all(&vec![b'{'; MAX_REQUEST + 10]).unwrap();
            let mut rest = String::new();
            long.read_to_string(&mut rest).unwrap();
            assert!(rest.contains("longer than 4096"), "{rest}");
            assert_eq!(rest.lines().count(), 1);
            let v = ask(&mut r, b"{\"cmd\":\"shutdown\"}\n");
            assert_eq!(v["ok"], true);
        });
        let reason = server.serve(&mut fake, &exit).unwrap();
        client.join().unwrap();
        assert_eq!(reason.to_string(), "stopped by test");
        assert_eq!(
            fake.seen,
            vec![
                Request::State,
                Request::Pause,
                Request::Resume,
                Request::Shutdown
            ]
        );
        drop(server);
        assert!(!path.exists(), "the socket is removed");
    }

    #[test]
    fn clients_beyond_the_limit_are_refused_and_others_still_served() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let mut server = ApiServer::bind(&path).unwrap();
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut fake = Fake {
            exit: exit.clone(),
            seen: Vec::new(),
        };
        let p = path.clone();
        let client = std::thread::spawn(move || {
            let mut held = Vec::new();
            let mut r = BufReader::new(UnixStream::connect(&p).unwrap());
            assert_eq!(ask(&mut r, b"{\"cmd\":\"state\"}\n")["ok"], true);
            for _ in 0..MAX_CLIENTS + 4 {
                held.push(UnixStream::connect(&p).unwrap());
            }
            // Every connection asks once: accepted ones are answered, the ones over the
            // limit were closed (EOF or a reset).
            let mut closed = 0;
            for s in held {
                let _ = (&s).write_all(b"{\"cmd\":\"state\"}\n");
                let mut l = String::new();
                match BufReader::new(s).read_line(&mut l) {
                    Ok(n) if n > 0 => assert!(l.contains("\"ok\":true"), "{l}"),
                    _ => closed += 1,
                }
            }
            assert_eq!(closed, 5, "one connection was already open, so 5 are over");
            assert_eq!(ask(&mut r, b"{\"cmd\":\"shutdown\"}\n")["ok"], true);
        });
        server.serve(&mut fake, &exit).unwrap();
        client.join().unwrap();
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        std::fs::write(&path, b"keep me").unwrap();
        let err = ApiServer::bind(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    }
}
