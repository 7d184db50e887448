//! Fuzzes virtio-blk's request processing: the request queue and its buffers come from the
//! input; the device worker executes every available request against a small disk (a
//! memfd of [`DISK_LEN`] bytes; read-only when control bit 4 is set), for two rounds.
//! Oracles besides "no panic, no hang": the disk never changes size, and a read-only
//! disk's bytes never change.
#![no_main]

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use hull_vmm::devices::virtio::block::device::Worker;
use hull_vmm::devices::virtio::block::request::Disk;
use hull_vmm::devices::virtio::Interrupt;
use hull_vmm_fuzz::{disk_file, disk_pattern, Guest, DISK_LEN};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|data: &[u8]| {
    let Some(g) = Guest::new(data) else {
        return;
    };
    let read_only = g.ctrl & 0x10 != 0;
    let file = disk_file();
    let backing = file.try_clone().expect("dup of the disk");
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let interrupt = Arc::new(Interrupt::new(irq));
    let disk = Disk::new(file, DISK_LEN, read_only, "fuzz");
    let Ok(mut w) = Worker::new(g.mem.clone(), vec![g.queue(0)], interrupt, disk) else {
        return;
    };
    w.process();
    w.process();
    let len = backing.metadata().expect("fstat of the disk").len();
    assert_eq!(len, DISK_LEN, "the guest changed the disk's size");
    if read_only {
        let mut now = vec![0u8; DISK_LEN as usize];
        backing
            .read_exact_at(&mut now, 0)
            .expect("reading the disk");
        assert!(now == disk_pattern(), "the guest wrote to a read-only disk");
    }
});
