//! Fuzzes virtio-net's frame processing: the RX (0) and TX (1) queues and their buffers come
//! from the input; a datagram socket pair stands in for the tap, whose host side sends
//! frames of several sizes (a runt shorter than the virtio-net header, a small frame, a
//! full Ethernet frame, a jumbo frame larger than the input's RAM); the device worker moves
//! frames for two rounds. Oracles besides "no panic, no hang": every frame reaching the tap
//! is whole, within `VNET_HDR_SIZE..=MAX_FRAME` bytes, and has its virtio-net header zeroed
//! (no offload request of the guest reaches the host kernel).
#![no_main]

use std::fs::File;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use hull_vmm::devices::virtio::net::device::{Worker, MAX_FRAME};
use hull_vmm::devices::virtio::net::tap::VNET_HDR_SIZE;
use hull_vmm::devices::virtio::Interrupt;
use hull_vmm_fuzz::Guest;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::epoll::Epoll;
use vmm_sys_util::eventfd::EventFd;

/// What the host side sends into the tap before each round.
const HOST_FRAMES: [usize; 4] = [
    4,
    VNET_HDR_SIZE + 60,
    VNET_HDR_SIZE + 1514,
    VNET_HDR_SIZE + 9000,
];

fuzz_target!(|data: &[u8]| {
    let Some(g) = Guest::new(data) else {
        return;
    };
    let (tap, host) = UnixDatagram::pair().expect("socketpair");
    tap.set_nonblocking(true).expect("non-blocking tap");
    host.set_nonblocking(true).expect("non-blocking host side");
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let interrupt = Arc::new(Interrupt::new(irq));
    let events = (0..2)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"))
        .collect();
    let Ok(mut w) = Worker::new(
        g.mem.clone(),
        vec![g.queue(0), g.queue(1)],
        interrupt,
        File::from(std::os::fd::OwnedFd::from(tap)),
        events,
        Epoll::new().expect("epoll"),
    ) else {
        return;
    };
    let mut frame = vec![0u8; MAX_FRAME + 1];
    for round in 0..2u8 {
        for len in HOST_FRAMES {
            let _ = host.send(&vec![round.wrapping_add(0xa0); len]);
        }
        w.process();
        while let Ok(n) = host.recv(&mut frame) {
            assert!(
                (VNET_HDR_SIZE..=MAX_FRAME).contains(&n),
                "a {n}-byte frame reached the tap"
            );
            assert!(
                frame[..VNET_HDR_SIZE].iter().all(|&b| b == 0),
                "the guest's virtio-net header reached the tap: {:?}",
                &frame[..VNET_HDR_SIZE]
            );
        }
    }
});
