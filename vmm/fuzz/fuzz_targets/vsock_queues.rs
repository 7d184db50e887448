//! Fuzzes the vsock device's queue processing: the three queues (RX, TX, event) and their
//! buffers come from the input; the device worker drains TX into a real muxer (with a
//! host listener on port 1025, so REQUESTs there connect), host data flows back, and RX is
//! filled, for a few rounds. The worker must neither panic nor hang.
#![no_main]

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use hull_vmm::devices::virtio::vsock::device::Worker;
use hull_vmm::devices::virtio::vsock::muxer::Muxer;
use hull_vmm::devices::virtio::vsock::GUEST_CID;
use hull_vmm::devices::virtio::Interrupt;
use hull_vmm_fuzz::Guest;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::epoll::EpollEvent;
use vmm_sys_util::eventfd::EventFd;

/// The host side every iteration shares: the muxer's socket path and the port 1025
/// listener guest REQUESTs connect to.
struct Host {
    path: PathBuf,
    port_1025: UnixListener,
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hull-fuzz-vsock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the socket directory");
        let path = dir.join("v.sock");
        let port_1025 = UnixListener::bind(format!("{}_1025", path.display()))
            .expect("binding the port 1025 listener");
        port_1025
            .set_nonblocking(true)
            .expect("non-blocking listener");
        Host { path, port_1025 }
    })
}

/// Hands the muxer's ready host sockets to it, as the worker's epoll loop does.
fn poll_host(w: &mut Worker) {
    let mut events = [EpollEvent::default(); 32];
    let n = w.muxer().epoll().wait(0, &mut events).unwrap_or(0);
    for e in &events[..n] {
        w.muxer().handle_event(e.data(), e.event_set());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(g) = Guest::new(data) else {
        return;
    };
    let host = host();
    let muxer = Muxer::new(&host.path, GUEST_CID).expect("binding the muxer socket");
    let queues = (0..3).map(|q| g.queue(q)).collect();
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let interrupt = Arc::new(Interrupt::new(irq));
    let events = (0..3)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"))
        .collect();
    let Ok(mut w) = Worker::new(g.mem.clone(), queues, interrupt, muxer, events) else {
        return;
    };
    let mut accepted: Vec<UnixStream> = Vec::new();
    for round in 0..3u8 {
        w.process();
        // Host side: accept what the guest connected to, answer with data, then (last
        // round) close, so RW, CREDIT and SHUTDOWN packets reach RX too.
        while let Ok((s, _)) = host.port_1025.accept() {
            accepted.push(s);
        }
        for s in &mut accepted {
            let _ = s.set_nonblocking(true);
            let _ = s.write(&[round; 100]);
        }
        if round == 1 {
            accepted.clear();
        }
        poll_host(&mut w);
    }
});
