//! The host side of vsock as hybrid vsock over unix sockets, and the per-connection state
//! machine.
//!
//! - host → guest: a client connects to the unix socket `PATH`, writes `CONNECT <port>\n`;
//!   the muxer sends the guest a REQUEST from a fresh host port, and on the guest's RESPONSE
//!   answers the client `OK <host port>\n`. Bytes then flow both ways.
//! - guest → host port P: a REQUEST becomes a connection to the unix socket `PATH_P`;
//!   RESPONSE if it succeeds, RST if not.
//!
//! Flow control is vsock's credit scheme: every packet to the guest carries our
//! `buf_alloc` ([`BUF_ALLOC`] per connection) and `fwd_cnt` (bytes we passed on to the unix
//! socket); we never send more than the guest's advertised credit. Every packet from the
//! guest is checked (CIDs, type, op, state, credit); one that does not fit its connection
//! resets that connection; one addressed elsewhere is dropped.
//!
//! Host sockets are non-blocking and registered edge-triggered on the muxer's epoll; the
//! device worker ([`super::device`]) waits on that epoll and calls [`Muxer::handle_event`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::num::Wrapping;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::packet::{op, Header, MAX_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// Receive buffer we advertise per connection (bytes the guest may have in flight to us).
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Send a credit update once this much was forwarded since the last one we sent.
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;
/// First host port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Connections (both directions) one VM may have open.
const MAX_CONNECTIONS: usize = 1024;
/// Host clients that have not finished their `CONNECT` line.
const MAX_PENDING: usize = 64;
/// The longest `CONNECT <port>\n` line accepted.
const MAX_CONNECT_LINE: usize = 128;
/// Control packets (RSTs to unknown connections) queued for the guest; TX processing stops
/// while this many wait, so a flooding guest cannot grow our memory.
pub const MAX_CONTROL: usize = 256;

/// Connection key: (host port, guest port).
type Key = (u32, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host-initiated: REQUEST queued or sent, waiting for the guest's RESPONSE.
    Connecting,
    /// Data flows.
    Established,
}

#[derive(Debug)]
struct Connection {
    stream: UnixStream,
    state: State,
    /// Guest → host bytes not yet written to the unix socket.
    tx_buf: Vec<u8>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Host → guest bytes sent.
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// The socket may have data (edge-triggered: cleared on WouldBlock).
    readable: bool,
    /// The host side reached EOF (we sent SHUTDOWN(SEND)).
    host_eof: bool,
    /// The guest sends no more: shut the socket's write side once `tx_buf` drains.
    peer_shut_send: bool,
    /// The guest receives no more.
    peer_shut_rcv: bool,
    write_shut: bool,
    // Control packets owed to the guest.
    send_request: bool,
    send_response: bool,
    send_credit_update: bool,
    send_shutdown: bool,
}

impl Connection {
    fn new(stream: UnixStream, state: State) -> Self {
        Connection {
            stream,
            state,
            tx_buf: Vec::new(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            readable: true,
            host_eof: false,
            peer_shut_send: false,
            peer_shut_rcv: false,
            write_shut: false,
            send_request: state == State::Connecting,
            send_response: false,
            send_credit_update: false,
            send_shutdown: false,
        }
    }

    /// Bytes the guest can still take from us.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn has_control(&self) -> bool {
        self.send_request || self.send_response || self.send_credit_update || self.send_shutdown
    }

    fn can_read(&self) -> bool {
        self.state == State::Established
            && self.readable
            && !self.host_eof
            && !self.peer_shut_rcv
            && self.peer_credit() > 0
    }

    /// Writes buffered guest bytes to the socket. `Err` means the host side is gone.
    fn flush(&mut self) -> std::io::Result<()> {
        let mut done = 0;
        while done < self.tx_buf.len() {
            match self.stream.write(&self.tx_buf[done..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.tx_buf.drain(..done);
        self.fwd_cnt += Wrapping(done as u32);
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.send_credit_update = true;
        }
        if self.tx_buf.is_empty() && self.peer_shut_send && !self.write_shut {
            self.write_shut = true;
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }
}

/// A host client that has not sent its whole `CONNECT` line yet.
#[derive(Debug)]
struct Pending {
    stream: UnixStream,
    line: Vec<u8>,
}

/// What an epoll token names.
#[derive(Debug, Clone, Copy)]
enum Owner {
    Pending,
    Conn(Key),
}

/// The host side of one VM's vsock device.
#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: BTreeMap<Key, Connection>,
    pending: HashMap<RawFd, Pending>,
    owners: HashMap<RawFd, Owner>,
    /// Packets for connections that no longer (or never did) exist: RSTs.
    control: VecDeque<Header>,
    next_local_port: u32,
    /// Round-robin position among connections with data for the guest.
    rr_cursor: Key,
}

impl Muxer {
    /// Binds the host socket at `uds_path` for the guest with `guest_cid`. A stale socket
    /// there is replaced; any other kind of file is an `AlreadyExists` error, never deleted.
    pub fn new(uds_path: &Path, guest_cid: u64) -> std::io::Result<Self> {
        let listener = crate::uds::bind_listening(uds_path)?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        let m = Muxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            epoll,
            conns: BTreeMap::new(),
            pending: HashMap::new(),
            owners: HashMap::new(),
            control: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            rr_cursor: (0, 0),
        };
        m.epoll.ctl(
            ControlOperation::Add,
            m.listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, m.listener.as_raw_fd() as u64),
        )?;
        Ok(m)
    }

    /// The epoll every host socket is registered on (the worker adds its queue events).
    pub fn epoll(&self) -> &Epoll {
        &self.epoll
    }

    /// Number of open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Whether TX processing should pause until the guest drains our control packets.
    pub fn control_full(&self) -> bool {
        self.control.len() >= MAX_CONTROL
    }

    fn register(&mut self, fd: RawFd, owner: Owner, events: EventSet) -> std::io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events | EventSet::EDGE_TRIGGERED, fd as u64),
        )?;
        self.owners.insert(fd, owner);
        Ok(())
    }

    fn forget(&mut self, fd: RawFd) {
        self.owners.remove(&fd);
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    /// Handles one epoll event whose token is `token`; returns false if the token is not
    /// one of ours.
    pub fn handle_event(&mut self, token: u64, events: EventSet) -> bool {
        let Ok(fd) = RawFd::try_from(token) else {
            return false;
        };
        if fd == self.listener.as_raw_fd() {
            self.accept_all();
            return true;
        }
        match self.owners.get(&fd).copied() {
            None => false,
            Some(Owner::Pending) => {
                self.read_connect_line(fd);
                true
            }
            Some(Owner::Conn(key)) => {
                let mut reset = false;
                if let Some(c) = self.conns.get_mut(&key) {
                    if events.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP)
                    {
                        c.readable = true;
                    }
                    if events.contains(EventSet::OUT) && c.flush().is_err() {
                        reset = true;
                    }
                    if events.contains(EventSet::ERROR) {
                        reset = true;
                    }
                }
                if reset {
                    self.reset(key);
                }
                true
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.pending.len() >= MAX_PENDING || stream.set_nonblocking(true).is_err() {
                        log::warn!("vsock: too many host clients in their handshake; dropped one");
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    if let Err(e) = self.register(fd, Owner::Pending, EventSet::IN) {
                        log::warn!("vsock: watching a host client: {e}");
                        continue;
                    }
                    self.pending.insert(
                        fd,
                        Pending {
                            stream,
                            line: Vec::new(),
                        },
                    );
                    // Its line may already be there (edge-triggered: no event would come).
                    self.read_connect_line(fd);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("vsock: accepting on {}: {e}", self.uds_path.display());
                    return;
                }
            }
        }
    }

    /// Reads a pending client's line byte by byte (nothing past the newline is consumed);
    /// on a full line, starts the connection to the guest.
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        let mut b = [0u8; 1];
        let done = loop {
            match p.stream.read(&mut b) {
                Ok(0) => break Err("closed before its CONNECT line"),
                Ok(_) if b[0] == b'\n' => break Ok(()),
                Ok(_) if p.line.len() >= MAX_CONNECT_LINE => break Err("CONNECT line too long"),
                Ok(_) => p.line.push(b[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break Err("read error"),
            }
        };
        let Some(p) = self.pending.remove(&fd) else {
            return;
        };
        self.forget(fd);
        let port = done.and_then(|()| parse_connect(&p.line).ok_or("malformed CONNECT line"));
        match port {
            Ok(port) => self.connect_to_guest(p.stream, port),
            Err(why) => log::info!("vsock: host client dropped: {why}"),
        }
    }

    fn connect_to_guest(&mut self, stream: UnixStream, guest_port: u32) {
        if self.conns.len() >= MAX_CONNECTIONS {
            log::warn!("vsock: connection limit reached; host CONNECT {guest_port} refused");
            return;
        }
        let local = self.alloc_local_port(guest_port);
        let key = (local, guest_port);
        if let Err(e) = self.register(
            stream.as_raw_fd(),
            Owner::Conn(key),
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP,
        ) {
            log::warn!("vsock: watching a host connection: {e}");
            return;
        }
        self.conns
            .insert(key, Connection::new(stream, State::Connecting));
    }

    fn alloc_local_port(&mut self, guest_port: u32) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(p, guest_port)) {
                return p;
            }
        }
    }

    /// The driver reset the device, so every connection is gone on the guest's side. Guest
    /// bytes not yet passed on go to their sockets as far as these take them now; then each
    /// host socket is closed. Queued RSTs are dropped. The listener stays, and so do host
    /// clients still sending their `CONNECT` line (the guest never heard of them).
    pub fn device_reset(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.conns) {
            let _ = c.flush();
            self.forget(c.stream.as_raw_fd());
        }
        self.control.clear();
        self.rr_cursor = (0, 0);
    }

    /// Catches up on host sockets whose edge-triggered events may have been taken without
    /// being handled (by a worker that stopped on the same wakeup): clients waiting in the
    /// listener's backlog, and `CONNECT` lines already sent. A new worker calls it first.
    pub fn catch_up(&mut self) {
        self.accept_all();
        let fds: Vec<RawFd> = self.pending.keys().copied().collect();
        for fd in fds {
            self.read_connect_line(fd);
        }
    }

    /// Drops a connection and owes the guest an RST for it.
    fn reset(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            self.forget(c.stream.as_raw_fd());
        }
        self.control
            .push_back(Header::new(self.guest_cid, key.0, key.1, op::RST));
    }

    /// Drops a connection without telling the guest (it reset it, or it is gone).
    fn remove(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            self.forget(c.stream.as_raw_fd());
        }
    }

    /// Handles one packet the guest sent (already read from a TX chain).
    pub fn handle_tx(&mut self, hdr: &Header, data: &[u8]) {
        if hdr.src_cid() != self.guest_cid || hdr.dst_cid() != super::packet::HOST_CID {
            log::debug!(
                "vsock: dropped a packet from CID {} to CID {}",
                hdr.src_cid(),
                hdr.dst_cid()
            );
            return;
        }
        let key = (hdr.dst_port(), hdr.src_port());
        if hdr.type_() != TYPE_STREAM {
            if hdr.op() != op::RST {
                self.control
                    .push_back(Header::new(self.guest_cid, key.0, key.1, op::RST));
            }
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            match hdr.op() {
                op::REQUEST => self.connect_to_host(key, hdr),
                op::RST => {}
                _ => self
                    .control
                    .push_back(Header::new(self.guest_cid, key.0, key.1, op::RST)),
            }
            return;
        };
        c.peer_buf_alloc = hdr.buf_alloc();
        c.peer_fwd_cnt = Wrapping(hdr.fwd_cnt());
        let ok = match (hdr.op(), c.state) {
            (op::RESPONSE, State::Connecting) => {
                c.state = State::Established;
                let line = format!("OK {}\n", key.0);
                c.stream.write_all(line.as_bytes()).is_ok()
            }
            (op::RW, State::Established) => {
                if c.peer_shut_send
                    || c.tx_buf.len().saturating_add(data.len()) > BUF_ALLOC as usize
                {
                    log::debug!("vsock: guest port {} overran its credit", key.1);
                    false
                } else {
                    c.tx_buf.extend_from_slice(data);
                    c.flush().is_ok()
                }
            }
            (op::CREDIT_UPDATE, _) => true,
            (op::CREDIT_REQUEST, _) => {
                c.send_credit_update = true;
                true
            }
            (op::SHUTDOWN, State::Established) => {
                let flags = hdr.flags();
                if flags & SHUTDOWN_RCV != 0 && flags & SHUTDOWN_SEND != 0 {
                    // The guest closed: pass on what it sent, then confirm with an RST.
                    let _ = c.flush();
                    false
                } else {
                    c.peer_shut_send |= flags & SHUTDOWN_SEND != 0;
                    c.peer_shut_rcv |= flags & SHUTDOWN_RCV != 0;
                    c.flush().is_ok()
                }
            }
            (op::RST, _) => {
                self.remove(key);
                return;
            }
            // REQUEST on a live connection, RESPONSE or RW out of state, unknown ops.
            _ => false,
        };
        if !ok {
            self.reset(key);
        }
    }

    /// A guest REQUEST to host port `key.0`: connect to `<uds>_<port>`.
    fn connect_to_host(&mut self, key: Key, req: &Header) {
        let rst = Header::new(self.guest_cid, key.0, key.1, op::RST);
        if self.conns.len() >= MAX_CONNECTIONS {
            self.control.push_back(rst);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", key.0));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(s) => s,
            Err(_) => {
                log::debug!("vsock: guest connect to host port {} refused", key.0);
                self.control.push_back(rst);
                return;
            }
        };
        if self
            .register(
                stream.as_raw_fd(),
                Owner::Conn(key),
                EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP,
            )
            .is_err()
        {
            self.control.push_back(rst);
            return;
        }
        let mut c = Connection::new(stream, State::Established);
        c.peer_buf_alloc = req.buf_alloc();
        c.peer_fwd_cnt = Wrapping(req.fwd_cnt());
        c.send_response = true;
        self.conns.insert(key, c);
    }

    /// Whether [`Muxer::next_rx`] may have a packet for the guest.
    pub fn has_rx(&self) -> bool {
        !self.control.is_empty() || self.conns.values().any(|c| c.has_control() || c.can_read())
    }

    /// The next packet for the guest, with a payload of at most `capacity` bytes.
    pub fn next_rx(&mut self, capacity: usize) -> Option<(Header, Vec<u8>)> {
        if let Some(h) = self.control.pop_front() {
            return Some((h, Vec::new()));
        }
        // Round-robin: connections after the cursor first, then from the start.
        let keys: Vec<Key> = self
            .conns
            .range((
                std::ops::Bound::Excluded(self.rr_cursor),
                std::ops::Bound::Unbounded,
            ))
            .chain(self.conns.range(..=self.rr_cursor))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            if let Some(pkt) = self.conn_rx(key, capacity) {
                self.rr_cursor = key;
                return Some(pkt);
            }
        }
        None
    }

    fn conn_rx(&mut self, key: Key, capacity: usize) -> Option<(Header, Vec<u8>)> {
        let cid = self.guest_cid;
        let c = self.conns.get_mut(&key)?;
        let hdr = |op: u16, c: &mut Connection| {
            c.last_fwd_cnt_sent = c.fwd_cnt;
            let mut h = Header::new(cid, key.0, key.1, op);
            h.set_credit(BUF_ALLOC, c.fwd_cnt.0);
            h
        };
        if c.send_request {
            c.send_request = false;
            return Some((hdr(op::REQUEST, c), Vec::new()));
        }
        if c.send_response {
            c.send_response = false;
            return Some((hdr(op::RESPONSE, c), Vec::new()));
        }
        if c.send_shutdown {
            c.send_shutdown = false;
            let mut h = hdr(op::SHUTDOWN, c);
            h.set_flags(SHUTDOWN_SEND);
            return Some((h, Vec::new()));
        }
        // A header-only RX buffer can carry control packets but no data.
        if c.can_read() && capacity > 0 {
            let n = capacity.min(c.peer_credit() as usize).min(MAX_PAYLOAD);
            let mut buf = vec![0u8; n];
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        c.host_eof = true;
                        c.send_shutdown = true;
                        break;
                    }
                    Ok(read) => {
                        buf.truncate(read);
                        c.rx_cnt += Wrapping(read as u32);
                        c.send_credit_update = false;
                        return Some((hdr(op::RW, c), buf));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        c.readable = false;
                        break;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.reset(key);
                        return self.control.pop_front().map(|h| (h, Vec::new()));
                    }
                }
            }
            if c.send_shutdown {
                c.send_shutdown = false;
                let mut h = hdr(op::SHUTDOWN, c);
                h.set_flags(SHUTDOWN_SEND);
                return Some((h, Vec::new()));
            }
        }
        if c.send_credit_update {
            c.send_credit_update = false;
            return Some((hdr(op::CREDIT_UPDATE, c), Vec::new()));
        }
        None
    }
}

/// Connects a non-blocking unix stream socket to `path`. Unlike a blocking connect, it
/// cannot stall the device thread when the listener's backlog is full (the guest decides how
/// often we connect): that fails at once with `WouldBlock`.
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::FromRawFd;

    // SAFETY: sockaddr_un is plain data; all-zero is a valid (empty) value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    // Leave room for the terminating NUL.
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(ErrorKind::InvalidInput.into());
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket we just created and own; UnixStream closes it on drop.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid sockaddr_un that lives across the call and the length is
    // its size.
    let rc = unsafe {
        libc::connect(
            fd,
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

/// Parses `CONNECT <port>` (the newline already stripped; a trailing `\r` is tolerated).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let port = line.strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::time::Duration;

    const CID: u64 = 3;

    fn muxer() -> (tempfile::TempDir, PathBuf, Muxer) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let m = Muxer::new(&path, CID).unwrap();
        (dir, path, m)
    }

    /// Runs the muxer's epoll once (what the device worker does).
    fn poll(m: &mut Muxer) {
        let mut events = vec![EpollEvent::default(); 16];
        let n = m.epoll().wait(200, &mut events).unwrap();
        for e in &events[..n] {
            m.handle_event(e.data(), e.event_set());
        }
    }

    fn from_guest(src_port: u32, dst_port: u32, op: u16, len: u32) -> Header {
        let mut h = Header::from_fields(CID, 2, src_port, dst_port, len, TYPE_STREAM, op);
        h.set_credit(64 * 1024, 0);
        h
    }

    fn ops(m: &mut Muxer) -> Vec<(u16, u32, u32)> {
        std::iter::from_fn(|| m.next_rx(4096))
            .map(|(h, _)| (h.op(), h.src_port(), h.dst_port()))
            .collect()
    }

    #[test]
    fn host_connects_never_block_on_a_full_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let _l = UnixListener::bind(&path).unwrap();
        let mut held = Vec::new();
        let err = loop {
            match connect_nonblocking(&path) {
                Ok(s) => held.push(s),
                Err(e) => break e,
            }
            assert!(held.len() < 100_000, "the backlog never filled");
        };
        assert_eq!(err.kind(), ErrorKind::WouldBlock, "{err}");
        assert!(connect_nonblocking(&dir.path().join("missing")).is_err());
        assert!(connect_nonblocking(Path::new(&"x".repeat(200))).is_err());
    }

    #[test]
    fn a_stale_socket_is_replaced_but_other_files_are_kept() {
        let (_d, path, m) = muxer();
        drop(m);
        Muxer::new(&path, CID).expect("a stale socket is replaced");
        let file = path.with_extension("txt");
        std::fs::write(&file, b"keep").unwrap();
        let err = Muxer::new(&file, CID).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    }

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 1024\r"), Some(1024));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT ",
            b"CONNECT -1",
            b"CONNECT 99999999999",
            b"connect 1",
            b"CONNECT 1 2",
            b"\xff",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn guest_initiated_connection_reaches_the_port_socket_both_ways() {
        let (_d, path, mut m) = muxer();
        let port_listener = UnixListener::bind(format!("{}_1025", path.display())).unwrap();
        m.handle_tx(&from_guest(5000, 1025, op::REQUEST, 0), &[]);
        let (mut host, _) = port_listener.accept().unwrap();
        assert_eq!(ops(&mut m), vec![(op::RESPONSE, 1025, 5000)]);
        m.handle_tx(&from_guest(5000, 1025, op::RW, 19), b"HULL-AGENT-READY 1\n");
        let mut line = String::new();
        std::io::BufReader::new(&host).read_line(&mut line).unwrap();
        assert_eq!(line, "HULL-AGENT-READY 1\n");
        host.write_all(b"pong").unwrap();
        poll(&mut m);
        let (h, data) = m.next_rx(4096).unwrap();
        assert_eq!(
            (h.op(), h.len(), data.as_slice()),
            (op::RW, 0, &b"pong"[..])
        );
        assert_eq!(h.buf_alloc(), BUF_ALLOC);
        assert_eq!(h.fwd_cnt(), 19);
        // The host closes: the guest learns it will get no more data.
        drop(host);
        poll(&mut m);
        assert_eq!(ops(&mut m), vec![(op::SHUTDOWN, 1025, 5000)]);
        // The guest closes: RST confirms, the connection is gone.
        let mut sd = from_guest(5000, 1025, op::SHUTDOWN, 0);
        sd.set_flags(SHUTDOWN_RCV | SHUTDOWN_SEND);
        m.handle_tx(&sd, &[]);
        assert_eq!(ops(&mut m), vec![(op::RST, 1025, 5000)]);
        assert_eq!(m.connections(), 0);
    }

    #[test]
    fn host_connect_becomes_a_request_and_ok_after_the_response() {
        let (_d, path, mut m) = muxer();
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"CONNECT 1024\n").unwrap();
        poll(&mut m);
        let got = ops(&mut m);
        assert_eq!(got, vec![(op::REQUEST, FIRST_LOCAL_PORT, 1024)]);
        m.handle_tx(&from_guest(1024, FIRST_LOCAL_PORT, op::RESPONSE, 0), &[]);
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(&client)
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, format!("OK {FIRST_LOCAL_PORT}\n"));
        client.write_all(b"ttrpc").unwrap();
        poll(&mut m);
        let (h, data) = m.next_rx(4096).unwrap();
        assert_eq!((h.op(), data.as_slice()), (op::RW, &b"ttrpc"[..]));
    }

    #[test]
    fn a_device_reset_closes_every_connection_and_keeps_listening() {
        let (_d, path, mut m) = muxer();
        // One guest-initiated connection with data on its way to the host...
        let port_listener = UnixListener::bind(format!("{}_1025", path.display())).unwrap();
        m.handle_tx(&from_guest(5000, 1025, op::REQUEST, 0), &[]);
        let (host, _) = port_listener.accept().unwrap();
        m.handle_tx(&from_guest(5000, 1025, op::RW, 3), b"bye");
        // ...one host-initiated connection waiting for the guest's RESPONSE, and an RST owed.
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"CONNECT 1024\n").unwrap();
        poll(&mut m);
        m.handle_tx(&from_guest(7, 99, op::RW, 0), &[]);
        assert_eq!(m.connections(), 2);
        assert!(m.has_rx());

        m.device_reset();
        assert_eq!(m.connections(), 0);
        assert!(
            !m.has_rx(),
            "nothing is owed to a guest that forgot everything"
        );
        host.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        (&host).read_to_end(&mut got).unwrap();
        assert_eq!(
            got, b"bye",
            "what the guest sent before the reset arrives, then EOF"
        );
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert!(
            rest.is_empty(),
            "the waiting client is closed without an OK"
        );

        // The next driver gets new host connections.
        let mut again = UnixStream::connect(&path).unwrap();
        again.write_all(b"CONNECT 1024\n").unwrap();
        poll(&mut m);
        assert_eq!(ops(&mut m), vec![(op::REQUEST, FIRST_LOCAL_PORT + 1, 1024)]);
    }

    /// A worker that stops takes its last wakeup with it: a client that sent its line then
    /// has no event left (edge-triggered). The next worker catches up.
    #[test]
    fn a_connect_line_whose_event_a_stopping_worker_took_is_served_after_a_catch_up() {
        let (_d, path, mut m) = muxer();
        let mut client = UnixStream::connect(&path).unwrap();
        poll(&mut m);
        client.write_all(b"CONNECT 1024\n").unwrap();
        // The stopping worker's wakeup: taken, not handled.
        let mut events = vec![EpollEvent::default(); 16];
        assert_eq!(m.epoll().wait(2000, &mut events).unwrap(), 1);
        m.device_reset();
        poll(&mut m);
        assert!(!m.has_rx(), "no event is left for the line");
        m.catch_up();
        assert_eq!(ops(&mut m), vec![(op::REQUEST, FIRST_LOCAL_PORT, 1024)]);
    }

    #[test]
    fn refused_and_bad_host_clients_get_nothing() {
        let (_d, path, mut m) = muxer();
        // Guest refuses: the client sees EOF without OK.
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"CONNECT 7\n").unwrap();
        poll(&mut m);
        assert_eq!(ops(&mut m).len(), 1);
        m.handle_tx(&from_guest(7, FIRST_LOCAL_PORT, op::RST, 0), &[]);
        assert_eq!(m.connections(), 0);
        let mut s = String::new();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        assert_eq!(client.read_to_string(&mut s).unwrap(), 0);
        // Garbage and over-long lines are dropped.
        for bad in [&b"HELLO\n"[..], &[b'C'; 300][..]] {
            let mut c = UnixStream::connect(&path).unwrap();
            c.write_all(bad).unwrap();
            poll(&mut m);
            assert!(ops(&mut m).is_empty());
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut s = Vec::new();
            assert_eq!(c.read_to_end(&mut s).unwrap_or(0), 0);
        }
    }

    #[test]
    fn hostile_packets_are_dropped_or_reset() {
        let (_d, path, mut m) = muxer();
        // Wrong source or destination CID: dropped silently.
        let mut h = from_guest(1, 1025, op::REQUEST, 0);
        h = Header::from_fields(
            4,
            2,
            h.src_port(),
            h.dst_port(),
            0,
            TYPE_STREAM,
            op::REQUEST,
        );
        m.handle_tx(&h, &[]);
        m.handle_tx(
            &Header::from_fields(CID, 7, 1, 1025, 0, TYPE_STREAM, op::REQUEST),
            &[],
        );
        assert!(ops(&mut m).is_empty());
        // No socket for the port: RST. Data on no connection: RST. RST on nothing: nothing.
        m.handle_tx(&from_guest(1, 4444, op::REQUEST, 0), &[]);
        m.handle_tx(&from_guest(1, 4445, op::RW, 3), b"abc");
        m.handle_tx(&from_guest(1, 4446, op::RST, 0), &[]);
        // Unknown type: RST.
        m.handle_tx(&Header::from_fields(CID, 2, 1, 9, 0, 2, op::REQUEST), &[]);
        assert_eq!(
            ops(&mut m),
            vec![(op::RST, 4444, 1), (op::RST, 4445, 1), (op::RST, 9, 1)]
        );
        // On a live connection: an unknown op, a second REQUEST, or data beyond our credit
        // reset it.
        let _l = UnixListener::bind(format!("{}_1025", path.display())).unwrap();
        for (op_, len) in [(99u16, 0u32), (op::REQUEST, 0), (op::RW, BUF_ALLOC + 1)] {
            m.handle_tx(&from_guest(5, 1025, op::REQUEST, 0), &[]);
            assert_eq!(ops(&mut m), vec![(op::RESPONSE, 1025, 5)]);
            let data = vec![0u8; len as usize];
            m.handle_tx(&from_guest(5, 1025, op_, len), &data);
            assert_eq!(ops(&mut m), vec![(op::RST, 1025, 5)], "op {op_}");
            assert_eq!(m.connections(), 0);
        }
        // A flood of bad packets fills the control queue to its bound, no further.
        for i in 0..(MAX_CONTROL as u32 + 10) {
            if m.control_full() {
                break;
            }
            m.handle_tx(&from_guest(i, 1, op::RW, 0), &[]);
        }
        assert!(m.control_full());
    }

    #[test]
    fn host_data_respects_the_guest_credit() {
        let (_d, path, mut m) = muxer();
        let l = UnixListener::bind(format!("{}_1025", path.display())).unwrap();
        let mut req = from_guest(5, 1025, op::REQUEST, 0);
        req.set_credit(4, 0);
        m.handle_tx(&req, &[]);
        let (mut host, _) = l.accept().unwrap();
        assert_eq!(ops(&mut m).len(), 1);
        host.write_all(b"0123456789").unwrap();
        poll(&mut m);
        let (h, data) = m.next_rx(4096).unwrap();
        assert_eq!((h.op(), data.as_slice()), (op::RW, &b"0123"[..]));
        assert!(m.next_rx(4096).is_none(), "no credit left");
        assert!(!m.has_rx());
        // The guest consumed 4 bytes: 4 more may come, in chunks of the RX buffer size.
        let mut upd = from_guest(5, 1025, op::CREDIT_UPDATE, 0);
        upd.set_credit(4, 4);
        m.handle_tx(&upd, &[]);
        let (_, data) = m.next_rx(3).unwrap();
        assert_eq!(data, b"456");
        // A credit request is answered with our credit.
        // (With the guest's buffer full, so no data goes with it.)
        let mut creq = from_guest(5, 1025, op::CREDIT_REQUEST, 0);
        creq.set_credit(4, 3);
        m.handle_tx(&creq, &[]);
        assert_eq!(ops(&mut m), vec![(op::CREDIT_UPDATE, 1025, 5)]);
    }

    #[test]
    fn forwarded_bytes_trigger_credit_updates() {
        let (_d, path, mut m) = muxer();
        let l = UnixListener::bind(format!("{}_1025", path.display())).unwrap();
        m.handle_tx(&from_guest(5, 1025, op::REQUEST, 0), &[]);
        let (host, _) = l.accept().unwrap();
        assert_eq!(ops(&mut m).len(), 1);
        let chunk = vec![7u8; 32 * 1024];
        let reader = std::thread::spawn(move || {
            let mut n = 0;
            let mut b = vec![0u8; 65536];
            let mut host = host;
            while n < 4 * 32 * 1024 {
                n += host.read(&mut b).unwrap();
            }
            n
        });
        let mut updates = 0;
        for _ in 0..4 {
            m.handle_tx(&from_guest(5, 1025, op::RW, chunk.len() as u32), &chunk);
            for _ in 0..20 {
                poll(&mut m);
                let o = ops(&mut m);
                updates += o.iter().filter(|o| o.0 == op::CREDIT_UPDATE).count();
                if updates > 0 {
                    break;
                }
            }
        }
        assert_eq!(reader.join().unwrap(), 4 * 32 * 1024);
        assert!(updates >= 1);
    }
}
