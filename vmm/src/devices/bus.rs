//! An address bus (port I/O or MMIO): non-overlapping ranges, each routed to one device.
//!
//! Accesses nobody claims read as zeros and are otherwise ignored, so a guest probing for
//! hardware that is not there sees "nothing" and never waits on a busy bit that would
//! never clear. The guest chooses the addresses, so every lookup is checked.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use thiserror::Error;

/// A device on a bus. `offset` is relative to the start of the device's range.
pub trait BusDevice: Send + Debug {
    /// A guest read of `data.len()` bytes at `offset`; the device fills `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors of building a bus.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps one already on the bus, or is empty or wraps around.
    #[error("bus range {base:#x}+{len:#x} is empty or overlaps another device")]
    Overlap {
        /// Start of the rejected range.
        base: u64,
        /// Its length.
        len: u64,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Address ranges mapped to devices.
#[derive(Debug, Clone, Default)]
pub struct Bus {
    // Keyed by range start.
    ranges: BTreeMap<u64, Entry>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Bus::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        let overlap = BusError::Overlap { base, len };
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(overlap.clone())?;
        if let Some((&b, e)) = self.ranges.range(..end).next_back() {
            if b + e.len > base {
                return Err(overlap);
            }
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// The device covering the whole access `[addr, addr + size)` and the offset of `addr`
    /// in its range.
    fn find(&self, addr: u64, size: usize) -> Option<(u64, &Arc<Mutex<dyn BusDevice>>)> {
        let (&base, e) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(size as u64)?;
        (end <= e.len).then_some((offset, &e.device))
    }

    /// Routes a guest read; unclaimed addresses read as zeros. Returns whether a device
    /// handled it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                lock(dev).read(offset, data);
                true
            }
            None => {
                data.fill(0);
                false
            }
        }
    }

    /// Routes a guest write; writes to unclaimed addresses are dropped. Returns whether a
    /// device handled it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                lock(dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device. A device whose lock is poisoned panicked in another vCPU thread; its
/// state is still the best we have, and that thread already ended the VM.
fn lock(dev: &Arc<Mutex<dyn BusDevice>>) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 0x10);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_are_routed_with_offsets_and_bounds() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b, [0x12]);
        assert!(bus.write(0x3ff, &[7]));
        assert_eq!(dev.lock().unwrap().writes, vec![(7, vec![7])]);
        // An access that starts inside but runs past the end is not the device's.
        let mut w = [0xaau8; 2];
        assert!(!bus.read(0x3ff, &mut w));
        assert_eq!(w, [0, 0]);
        assert!(!bus.write(0x400, &[1]));
        assert!(!bus.write(0x3f7, &[1]));
        assert!(!bus.read(u64::MAX, &mut [0u8; 8]));
    }

    #[test]
    fn overlapping_empty_and_wrapping_ranges_are_rejected() {
        let d = || Arc::new(Mutex::new(Recorder::default())) as Arc<Mutex<dyn BusDevice>>;
        let mut bus = Bus::new();
        bus.insert(0x10, 0x10, d()).unwrap();
        for (base, len) in [(0x8, 0x9), (0x1f, 1), (0x10, 1), (0x0, 0x100), (0x30, 0)] {
            assert_eq!(
                bus.insert(base, len, d()),
                Err(BusError::Overlap { base, len }),
                "{base:#x}+{len:#x}"
            );
        }
        assert!(bus.insert(u64::MAX, 2, d()).is_err());
        bus.insert(0x20, 1, d()).unwrap();
        bus.insert(0x0, 0x10, d()).unwrap();
    }
}
