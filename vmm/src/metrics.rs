//! Counters the VMM keeps while the guest runs, read by the control socket's `metrics`
//! command ([`crate::api`]).
//!
//! Each counter set is a struct of atomics owned (through an `Arc`) by what it counts: every
//! vCPU has a [`VcpuMetrics`], the vsock device a [`VsockMetrics`], each disk a
//! [`BlockMetrics`], the NIC a [`NetMetrics`], the console a [`ConsoleMetrics`]. Updates are single `Relaxed` additions on paths that already cost a VM
//! exit or a system call, so counting is always on. [`Metrics`] only collects the `Arc`s and
//! turns them into a serialisable [`MetricsSnapshot`]; a snapshot is not atomic across
//! counters (each value is read once, while the guest may keep running).
//!
//! Not here: histograms, per-queue counters, virtio-fs traffic (virtiofsd's own), a
//! push/flush mechanism (the client polls).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

/// Reads a counter.
fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Adds `n` to a counter.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// One vCPU's `KVM_RUN` exits by kind, and when it first entered the guest.
#[derive(Debug, Default)]
pub struct VcpuMetrics {
    /// Port reads.
    pub io_in: AtomicU64,
    /// Port writes.
    pub io_out: AtomicU64,
    /// MMIO reads.
    pub mmio_read: AtomicU64,
    /// MMIO writes.
    pub mmio_write: AtomicU64,
    /// `KVM_RUN` interrupted (`EINTR`, `KVM_EXIT_INTR`): kicks for pause/stop, signals.
    pub interrupted: AtomicU64,
    /// `HLT` exits, triple faults and system events (the VM's end).
    pub halt_or_event: AtomicU64,
    /// Anything else (entry failures, internal errors, unexpected exits).
    pub other: AtomicU64,
    /// `CLOCK_MONOTONIC` (ns) just before this vCPU's first `KVM_RUN`; 0 until then.
    pub first_run_monotonic_ns: AtomicU64,
    /// Microseconds from hull-vmm's start (the top of `main`) to that first `KVM_RUN`.
    pub first_run_since_start_us: AtomicU64,
    /// The process's CPU time (user + system, all threads, µs) at that first `KVM_RUN`.
    pub first_run_process_cpu_us: AtomicU64,
}

/// The vsock device's traffic. RX is host → guest (the device's RX queue), TX guest → host.
#[derive(Debug, Default)]
pub struct VsockMetrics {
    /// Packets written into the guest's RX buffers.
    pub rx_packets: AtomicU64,
    /// Payload bytes in them.
    pub rx_bytes: AtomicU64,
    /// Valid packets read from the guest's TX queue.
    pub tx_packets: AtomicU64,
    /// Payload bytes in them.
    pub tx_bytes: AtomicU64,
    /// TX chains dropped as malformed.
    pub tx_dropped: AtomicU64,
}

/// One virtio-blk disk's requests (counted when the request completes).
#[derive(Debug, Default)]
pub struct BlockMetrics {
    /// Completed reads (IN).
    pub reads: AtomicU64,
    /// Bytes read into the guest.
    pub read_bytes: AtomicU64,
    /// Completed writes (OUT).
    pub writes: AtomicU64,
    /// Bytes written to the disk.
    pub write_bytes: AtomicU64,
    /// Completed flushes.
    pub flushes: AtomicU64,
    /// Requests that failed (malformed, unsupported, out of range, I/O errors).
    pub failed: AtomicU64,
}

/// The virtio-net device's frames. RX is tap → guest, TX guest → tap.
#[derive(Debug, Default)]
pub struct NetMetrics {
    /// Frames delivered to the guest.
    pub rx_frames: AtomicU64,
    /// Their bytes (without the vnet header).
    pub rx_bytes: AtomicU64,
    /// Frames from the tap dropped because they did not fit the guest's buffers.
    pub rx_dropped: AtomicU64,
    /// Frames the tap took from the guest.
    pub tx_frames: AtomicU64,
    /// Their bytes (without the vnet header).
    pub tx_bytes: AtomicU64,
    /// Guest frames the tap refused, and malformed TX chains.
    pub tx_dropped: AtomicU64,
}

/// The serial console's output.
#[derive(Debug, Default)]
pub struct ConsoleMetrics {
    /// Bytes the guest wrote to the console (that reached its destination).
    pub bytes: AtomicU64,
}

/// All counter sets of one VM.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// One per vCPU, by index.
    pub vcpus: Vec<Arc<VcpuMetrics>>,
    /// The vsock device's, if the VM has one.
    pub vsock: Option<Arc<VsockMetrics>>,
    /// The disks', in order (vda, vdb, ...).
    pub block: Vec<Arc<BlockMetrics>>,
    /// The NIC's, if the VM has one.
    pub net: Option<Arc<NetMetrics>>,
    /// The console's.
    pub console: Option<Arc<ConsoleMetrics>>,
}

/// `KVM_RUN` exits of all vCPUs, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExitCounts {
    /// Port reads.
    pub io_in: u64,
    /// Port writes.
    pub io_out: u64,
    /// MMIO reads.
    pub mmio_read: u64,
    /// MMIO writes.
    pub mmio_write: u64,
    /// Interrupted runs (kicks, signals).
    pub interrupted: u64,
    /// HLT, triple fault, system events.
    pub halt_or_event: u64,
    /// Everything else.
    pub other: u64,
    /// The sum.
    pub total: u64,
}

/// When vCPU 0 first entered the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FirstRun {
    /// `CLOCK_MONOTONIC` in ns (comparable with a timestamp the launcher took before exec).
    pub monotonic_ns: u64,
    /// µs since hull-vmm's `main` started.
    pub since_start_us: u64,
    /// hull-vmm's CPU time (user + system, all threads) in µs at that moment.
    pub process_cpu_us: u64,
}

/// The vsock counters, as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VsockCounts {
    /// Host → guest packets.
    pub rx_packets: u64,
    /// Host → guest payload bytes.
    pub rx_bytes: u64,
    /// Guest → host packets.
    pub tx_packets: u64,
    /// Guest → host payload bytes.
    pub tx_bytes: u64,
    /// Malformed guest TX chains dropped.
    pub tx_dropped: u64,
}

/// One disk's counters, as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockCounts {
    /// Completed reads.
    pub reads: u64,
    /// Bytes read into the guest.
    pub read_bytes: u64,
    /// Completed writes.
    pub writes: u64,
    /// Bytes written to the disk.
    pub write_bytes: u64,
    /// Completed flushes.
    pub flushes: u64,
    /// Failed requests.
    pub failed: u64,
}

/// The NIC's counters, as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetCounts {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Tap frames too large for the guest's buffers.
    pub rx_dropped: u64,
    /// Guest frames the tap took.
    pub tx_frames: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Guest frames dropped.
    pub tx_dropped: u64,
}

/// Every counter, read once; what `metrics` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetricsSnapshot {
    /// Exits summed over all vCPUs.
    pub vcpu_exits: ExitCounts,
    /// vCPU 0's first `KVM_RUN`; `None` before it happened.
    pub first_kvm_run: Option<FirstRun>,
    /// vsock traffic; `None` without a vsock device.
    pub vsock: Option<VsockCounts>,
    /// Each disk's requests, in order.
    pub block: Vec<BlockCounts>,
    /// NIC traffic; `None` without a NIC.
    pub net: Option<NetCounts>,
    /// Console bytes written by the guest.
    pub console_bytes: u64,
}

impl Metrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let mut e = ExitCounts::default();
        for v in &self.vcpus {
            e.io_in += get(&v.io_in);
            e.io_out += get(&v.io_out);
            e.mmio_read += get(&v.mmio_read);
            e.mmio_write += get(&v.mmio_write);
            e.interrupted += get(&v.interrupted);
            e.halt_or_event += get(&v.halt_or_event);
            e.other += get(&v.other);
        }
        e.total = e.io_in
            + e.io_out
            + e.mmio_read
            + e.mmio_write
            + e.interrupted
            + e.halt_or_event
            + e.other;
        let first_kvm_run = self.vcpus.first().and_then(|v| {
            let ns = get(&v.first_run_monotonic_ns);
            (ns != 0).then(|| FirstRun {
                monotonic_ns: ns,
                since_start_us: get(&v.first_run_since_start_us),
                process_cpu_us: get(&v.first_run_process_cpu_us),
            })
        });
        MetricsSnapshot {
            vcpu_exits: e,
            first_kvm_run,
            vsock: self.vsock.as_ref().map(|v| VsockCounts {
                rx_packets: get(&v.rx_packets),
                rx_bytes: get(&v.rx_bytes),
                tx_packets: get(&v.tx_packets),
                tx_bytes: get(&v.tx_bytes),
                tx_dropped: get(&v.tx_dropped),
            }),
            block: self
                .block
                .iter()
                .map(|b| BlockCounts {
                    reads: get(&b.reads),
                    read_bytes: get(&b.read_bytes),
                    writes: get(&b.writes),
                    write_bytes: get(&b.write_bytes),
                    flushes: get(&b.flushes),
                    failed: get(&b.failed),
                })
                .collect(),
            net: self.net.as_ref().map(|n| NetCounts {
                rx_frames: get(&n.rx_frames),
                rx_bytes: get(&n.rx_bytes),
                rx_dropped: get(&n.rx_dropped),
                tx_frames: get(&n.tx_frames),
                tx_bytes: get(&n.tx_bytes),
                tx_dropped: get(&n.tx_dropped),
            }),
            console_bytes: self.console.as_ref().map_or(0, |c| get(&c.bytes)),
        }
    }
}

/// Reads clock `id` in nanoseconds (0 if the clock cannot be read, which for the clocks used
/// here does not happen on Linux).
pub fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime writes only into it.
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_sums_vcpus_and_reads_each_device() {
        let (a, b) = (
            Arc::new(VcpuMetrics::default()),
            Arc::new(VcpuMetrics::default()),
        );
        add(&a.io_out, 3);
        add(&b.io_out, 4);
        add(&b.mmio_read, 1);
        add(&a.interrupted, 2);
        let console = Arc::new(ConsoleMetrics::default());
        add(&console.bytes, 42);
        let disk = Arc::new(BlockMetrics::default());
        add(&disk.writes, 2);
        add(&disk.write_bytes, 8192);
        let m = Metrics {
            vcpus: vec![a.clone(), b],
            vsock: None,
            block: vec![disk],
            net: None,
            console: Some(console),
        };
        let s = m.snapshot();
        assert_eq!(
            (
                s.vcpu_exits.io_out,
                s.vcpu_exits.mmio_read,
                s.vcpu_exits.total
            ),
            (7, 1, 10)
        );
        assert_eq!(s.console_bytes, 42);
        assert_eq!(s.vsock, None);
        assert_eq!(s.first_kvm_run, None, "vCPU 0 has not run");
        a.first_run_monotonic_ns.store(5, Ordering::Relaxed);
        a.first_run_process_cpu_us.store(1500, Ordering::Relaxed);
        let f = m.snapshot().first_kvm_run.expect("vCPU 0 ran");
        assert_eq!((f.monotonic_ns, f.process_cpu_us), (5, 1500));
        let json = serde_json::to_string(&m.snapshot()).unwrap();
        assert!(json.contains(r#""io_out":7"#), "{json}");
        assert!(json.contains(r#""vsock":null"#), "{json}");
        assert!(json.contains(r#""net":null"#), "{json}");
        assert!(
            json.contains(r#""block":[{"reads":0,"read_bytes":0,"writes":2,"write_bytes":8192"#),
            "{json}"
        );
    }

    #[test]
    fn clocks_move_forward() {
        let a = clock_ns(libc::CLOCK_MONOTONIC);
        let b = clock_ns(libc::CLOCK_MONOTONIC);
        assert!(a > 0 && b >= a);
        assert!(clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID) > 0);
    }
}
