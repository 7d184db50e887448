//! Tests of the virtio-fs frontend against a fake vhost-user backend on a socketpair: it
//! records every request (with the descriptor it carried) and answers the GET requests and
//! REPLY_ACK confirmations the way a real backend does.

use super::*;
use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::devices::virtio::VIRTIO_MMIO_INT_VRING;

// vhost-user request codes and header flags (vhost-user spec).
const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const SET_OWNER: u32 = 3;
const SET_MEM_TABLE: u32 = 5;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_ADDR: u32 = 9;
const SET_VRING_BASE: u32 = 10;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_CALL: u32 = 13;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
const SET_VRING_ENABLE: u32 = 18;
const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;

const PROTOCOL_BIT: u64 = 1 << 30;
const EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

#[derive(Debug)]
struct Msg {
    code: u32,
    flags: u32,
    body: Vec<u8>,
    fd: Option<File>,
}

impl Msg {
    fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.body[at..at + 8].try_into().unwrap())
    }
}

/// Serves `sock` until the frontend closes it; returns the requests as they arrive and a
/// handle on the same socket (to kill the "backend" by shutting it down).
fn fake_backend(features: u64, protocol: u64) -> (UnixStream, UnixStream, Receiver<Msg>) {
    let (frontend, backend) = UnixStream::pair().unwrap();
    let killer = backend.try_clone().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sock = backend;
        loop {
            let mut hdr = [0u8; 12];
            let (n, fd) = match sock.recv_with_fd(&mut hdr) {
                Ok((0, _)) | Err(_) => return,
                Ok(r) => r,
            };
            if n < hdr.len() && sock.read_exact(&mut hdr[n..]).is_err() {
                return;
            }
            let word = |i: usize| u32::from_le_bytes(hdr[i * 4..i * 4 + 4].try_into().unwrap());
            let (code, flags, size) = (word(0), word(1), word(2));
            let mut body = vec![0u8; size as usize];
            if sock.read_exact(&mut body).is_err() {
                return;
            }
            let reply = match code {
                GET_FEATURES => Some(features),
                GET_PROTOCOL_FEATURES => Some(protocol),
                _ if flags & FLAG_NEED_REPLY != 0 => Some(0),
                _ => None,
            };
            if let Some(v) = reply {
                let mut out = Vec::new();
                for w in [code, FLAG_VERSION | FLAG_REPLY, 8] {
                    out.extend_from_slice(&w.to_le_bytes());
                }
                out.extend_from_slice(&v.to_le_bytes());
                if sock.write_all(&out).is_err() {
                    return;
                }
            }
            if tx
                .send(Msg {
                    code,
                    flags,
                    body,
                    fd,
                })
                .is_err()
            {
                return;
            }
        }
    });
    (frontend, killer, rx)
}

fn next(rx: &Receiver<Msg>) -> Msg {
    rx.recv_timeout(Duration::from_secs(5))
        .expect("the frontend sent no further request")
}

fn codes(rx: &Receiver<Msg>, n: usize) -> Vec<u32> {
    (0..n).map(|_| next(rx).code).collect()
}

const REPLY_ACK: u64 = 0x8;
const MQ: u64 = 0x1;
const CONFIG: u64 = 0x200;

fn device() -> (VhostUserFs, UnixStream, Receiver<Msg>) {
    let (s, killer, rx) = fake_backend(
        VIRTIO_F_VERSION_1 | EVENT_IDX | (1 << 5) | PROTOCOL_BIT,
        MQ | REPLY_ACK | CONFIG,
    );
    let dev = VhostUserFs::from_stream("hull-share", s).unwrap();
    (dev, killer, rx)
}

#[test]
fn config_space_holds_the_tag_and_one_request_queue() {
    let (dev, _k, _rx) = device();
    assert_eq!(dev.device_type(), 26);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    let mut cfg = [0xffu8; 44];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..10], b"hull-share");
    assert!(cfg[10..36].iter().all(|&b| b == 0));
    assert_eq!(&cfg[36..40], &1u32.to_le_bytes());
    // Past the end and at absurd offsets: zeros, never a panic.
    assert_eq!(&cfg[40..], &[0; 4]);
    let mut b = [0xffu8; 4];
    dev.read_config(38, &mut b);
    assert_eq!(b, [0; 4]);
    dev.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0; 4]);
}

#[test]
fn invalid_tags_are_refused_before_any_request() {
    for bad in ["", &"x".repeat(37), "a\0b"] {
        let (s, _other) = UnixStream::pair().unwrap();
        let e = VhostUserFs::from_stream(bad, s).unwrap_err();
        assert!(matches!(e, FsError::InvalidTag(_)), "{bad:?}: {e}");
    }
    let (s, _k, _rx) = fake_backend(VIRTIO_F_VERSION_1, 0);
    let full = "t".repeat(36);
    let dev = VhostUserFs::from_stream(&full, s).unwrap();
    let mut cfg = [0u8; 36];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..], full.as_bytes());
}

#[test]
fn negotiation_offers_the_guest_only_passthrough_features_and_takes_reply_ack() {
    let (dev, _k, rx) = device();
    assert_eq!(
        codes(&rx, 3),
        [SET_OWNER, GET_FEATURES, GET_PROTOCOL_FEATURES]
    );
    let set = next(&rx);
    assert_eq!(set.code, SET_PROTOCOL_FEATURES);
    assert_eq!(set.u64_at(0), REPLY_ACK);
    // Bit 5 (unknown to us) and the vhost-user-only bit 30 never reach the guest.
    assert_eq!(dev.features(), VIRTIO_F_VERSION_1 | EVENT_IDX);
}

#[test]
fn a_backend_without_virtio_1_or_protocol_features_is_handled() {
    let (s, _k, _rx) = fake_backend(EVENT_IDX, 0);
    let e = VhostUserFs::from_stream("t", s).unwrap_err();
    assert!(matches!(e, FsError::NotVersion1(_)), "{e}");
    // No protocol features: no GET_PROTOCOL_FEATURES, and rings are not enabled explicitly.
    let (s, _k, rx) = fake_backend(VIRTIO_F_VERSION_1, 0);
    VhostUserFs::from_stream("t", s).unwrap();
    assert_eq!(codes(&rx, 2), [SET_OWNER, GET_FEATURES]);
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
}

fn queues(mem: &GuestMemoryMmap) -> Vec<Queue> {
    (0..2u64)
        .map(|i| {
            let mut q = Queue::new(QUEUE_SIZE).unwrap();
            let base = 0x1_0000 * (i + 1);
            q.set_size(16);
            q.set_desc_table_address(Some(base as u32), Some(0));
            q.set_avail_ring_address(Some((base + 0x1000) as u32), Some(0));
            q.set_used_ring_address(Some((base + 0x2000) as u32), Some(0));
            q.set_ready(true);
            assert!(q.is_valid(mem));
            q
        })
        .collect()
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(5), "{what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn activation_hands_memory_and_rings_to_the_backend_and_relays_its_calls() {
    let (mut dev, killer, rx) = device();
    codes(&rx, 4); // the negotiation, tested above
    let ram = crate::memory::create(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let mem = ram.memory.clone();
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    dev.activate(
        mem.clone(),
        queues(&mem),
        VIRTIO_F_VERSION_1 | EVENT_IDX,
        irq.clone(),
    )
    .unwrap();

    let features = next(&rx);
    assert_eq!(features.code, SET_FEATURES);
    assert_eq!(
        features.u64_at(0),
        VIRTIO_F_VERSION_1 | EVENT_IDX | PROTOCOL_BIT
    );
    let table = next(&rx);
    assert_eq!(table.code, SET_MEM_TABLE);
    // REPLY_ACK was negotiated: the set-up asks for each confirmation (and the fake
    // backend gives it), so a backend refusing a message fails activation.
    assert_ne!(table.flags & FLAG_NEED_REPLY, 0, "{:#x}", table.flags);
    assert!(
        table.fd.is_some(),
        "the guest RAM memfd travels with SET_MEM_TABLE"
    );
    // VhostUserMemory: num_regions u32, padding u32; region: gpa, size, uaddr, offset.
    assert_eq!(table.body[0], 1);
    assert_eq!(table.u64_at(8), 0);
    assert_eq!(table.u64_at(16), 0x10_0000);

    let mut call = None;
    let mut kicks = Vec::new();
    for i in 0..2u64 {
        let m = codes(&rx, 2);
        assert_eq!(m, [SET_VRING_NUM, SET_VRING_BASE]);
        let addr = next(&rx);
        assert_eq!(addr.code, SET_VRING_ADDR);
        // struct vhost_vring_addr: index, flags, desc, used, avail, log — host addresses.
        let host = |gpa: u64| mem.get_host_address(GuestAddress(gpa)).unwrap() as u64;
        let base = 0x1_0000 * (i + 1);
        assert_eq!(addr.u64_at(8), host(base));
        assert_eq!(addr.u64_at(16), host(base + 0x2000));
        assert_eq!(addr.u64_at(24), host(base + 0x1000));
        let kick = next(&rx);
        assert_eq!(kick.code, SET_VRING_KICK);
        kicks.push(kick.fd.expect("kick eventfd"));
        let c = next(&rx);
        assert_eq!(c.code, SET_VRING_CALL);
        call = c.fd;
    }
    assert_eq!(codes(&rx, 2), [SET_VRING_ENABLE, SET_VRING_ENABLE]);

    // A guest kick (KVM writes the queue's ioeventfd) reaches the backend's descriptor.
    dev.queue_events()[1].write(1).unwrap();
    let mut n = [0u8; 8];
    (&kicks[1]).read_exact(&mut n).unwrap();
    assert_eq!(u64::from_ne_bytes(n), 1);

    // A backend call becomes the VRING bit in InterruptStatus.
    assert_eq!(irq.status(), 0);
    let mut call = call.expect("call eventfd");
    call.write_all(&1u64.to_ne_bytes()).unwrap();
    wait_for("the relay did not raise the interrupt", || {
        irq.status() & VIRTIO_MMIO_INT_VRING != 0
    });

    // The backend dies: the relay notices and stops; nothing panics.
    assert!(!dev.relay_stopped());
    killer.shutdown(Shutdown::Both).unwrap();
    wait_for("the relay did not notice the hang-up", || {
        dev.relay_stopped()
    });
    assert!(matches!(
        dev.activate(mem.clone(), queues(&mem), 0, irq),
        Err(ActivateError::AlreadyActive)
    ));
}

#[test]
fn a_backend_that_died_before_driver_ok_fails_activation() {
    let (mut dev, killer, _rx) = device();
    killer.shutdown(Shutdown::Both).unwrap();
    let ram = crate::memory::create(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let irq = Arc::new(Interrupt::new(EventFd::new(0).unwrap()));
    let e = dev
        .activate(
            ram.memory.clone(),
            queues(&ram.memory),
            VIRTIO_F_VERSION_1,
            irq,
        )
        .unwrap_err();
    assert!(matches!(e, ActivateError::Backend(_)), "{e}");
    // Fewer queues than the device has never reach the backend.
    let (mut dev, _k, _rx) = device();
    let irq = Arc::new(Interrupt::new(EventFd::new(0).unwrap()));
    let mut q = queues(&ram.memory);
    q.pop();
    assert!(matches!(
        dev.activate(ram.memory.clone(), q, VIRTIO_F_VERSION_1, irq),
        Err(ActivateError::InvalidQueue(1))
    ));
}
