//! The i8042 keyboard controller, reduced to the one thing a microVM guest uses it for:
//! writing 0xFE to its command port (0x64) pulses the CPU reset line. The VM then ends
//! with [`ExitReason::Reset`]. Reads return 0 (no keyboard data, controller idle).

use std::sync::Arc;

use super::BusDevice;
use crate::vstate::{ExitReason, ExitSignal};

/// The i8042 command "pulse output line 0" (CPU reset).
pub const CMD_RESET_CPU: u8 = 0xfe;

/// The i8042 command port, as seen on a one-byte range.
#[derive(Debug)]
pub struct I8042 {
    exit: Arc<ExitSignal>,
}

impl I8042 {
    /// A controller that ends the VM through `exit` on reset.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042 { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data == [CMD_RESET_CPU] {
            self.exit.signal(ExitReason::Reset {
                cause: "i8042 reset".into(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_reset_command_ends_the_vm() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut dev = I8042::new(exit.clone());
        dev.write(0, &[0xd1]);
        dev.write(0, &[0xfe, 0]);
        assert_eq!(exit.reason(), None);
        dev.write(0, &[CMD_RESET_CPU]);
        assert_eq!(
            exit.reason(),
            Some(ExitReason::Reset {
                cause: "i8042 reset".into()
            })
        );
    }
}
