//! The guest console: vm-superio's 8250 UART, its output going to a file or stdout and its
//! interrupt line an eventfd that KVM injects (irqfd).
//!
//! Output only: the guest's writes reach the console; nothing is fed to the guest's input
//! yet. Every character the guest writes is several VM exits, so guests should keep the
//! console quiet (`quiet` on the kernel command line).

use std::io::Write;
use std::sync::Arc;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;
use crate::metrics::{self, ConsoleMetrics};

/// An interrupt line backed by an eventfd registered with KVM as an irqfd.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The console's destination.
pub type ConsoleWriter = Box<dyn Write + Send>;

/// Passes console output on and counts the bytes that got through.
struct Counting {
    out: ConsoleWriter,
    metrics: Arc<ConsoleMetrics>,
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        metrics::add(&self.metrics.bytes, n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// The 8250 UART at one port range.
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, vm_superio::serial::NoEvents, ConsoleWriter>,
    metrics: Arc<ConsoleMetrics>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A UART that raises `irq` and writes to `out`.
    pub fn new(irq: EventFd, out: ConsoleWriter) -> Self {
        let metrics = Arc::<ConsoleMetrics>::default();
        let out = Box::new(Counting {
            out,
            metrics: metrics.clone(),
        });
        SerialDevice {
            serial: Serial::new(EventFdTrigger(irq), out),
            metrics,
        }
    }

    /// The console's byte counter.
    pub fn metrics(&self) -> Arc<ConsoleMetrics> {
        self.metrics.clone()
    }

    /// Flushes buffered console output.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.serial.writer_mut().flush()
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        // The UART has 8 byte-wide registers; wider accesses are not meaningful.
        if let ([b], Ok(off)) = (data, u8::try_from(offset)) {
            *b = self.serial.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let ([b], Ok(off)) = (data, u8::try_from(offset)) {
            if let Err(e) = self.serial.write(off, *b) {
                // A full disk or a closed stdout must not stop the guest.
                log::warn!("console: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn guest_writes_to_thr_reach_the_console_and_thre_interrupts_fire() {
        let out = Shared::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        // IER: enable the "transmitter holding register empty" interrupt.
        dev.write(1, &[0x02]);
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");
        assert_eq!(
            dev.metrics()
                .bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
        assert!(irq.read().unwrap() >= 1);
        // LSR says the transmitter is empty: the guest driver never waits.
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60);
        // Wide or out-of-range accesses are ignored, not a panic.
        let mut wide = [0xffu8; 4];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0; 4]);
        dev.write(u64::MAX, &[1]);
        dev.write(0, &[1, 2]);
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");
    }
}
