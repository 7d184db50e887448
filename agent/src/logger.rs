//! A minimal `log` backend that writes one line per record to stderr (the guest console
//! when the agent is PID 1).
//!
//! Hand-written instead of env_logger on purpose: PID 1 has no useful environment, and every
//! console byte costs a VM exit, so the format is fixed and terse (`hull-agent: LEVEL msg`).
//! The level comes from `hull_log=<level>` on the kernel command line, which the kernel hands
//! to init as the environment variable `hull_log`, or from `--log-level` in host mode.

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

struct ConsoleLogger;

impl Log for ConsoleLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            // One write per line so lines from concurrent tasks never interleave mid-line.
            let line = format!("hull-agent: {} {}\n", record.level(), record.args());
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

static LOGGER: ConsoleLogger = ConsoleLogger;

/// Parses a level name; unknown names fall back to `info` (logged by the caller).
pub fn parse_level(name: &str) -> Option<LevelFilter> {
    name.parse().ok()
}

/// Installs the console logger. Safe to call more than once (later calls change the level).
pub fn init(level: LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_case_insensitively_and_reject_garbage() {
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("WARN"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("off"), Some(LevelFilter::Off));
        assert_eq!(parse_level("loud"), None);
    }
}
