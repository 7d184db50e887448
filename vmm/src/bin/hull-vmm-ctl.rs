//! `hull-vmm-ctl SOCK CMD [TIMEOUT_S]`: sends one command to hull-vmm's control socket and
//! prints the reply line.
//!
//! CMD is `pause`, `resume`, `shutdown`, `state` or `metrics` (the request is
//! `{"cmd":"CMD"}`; see `hull_vmm::api::protocol`). Exits 0 when the reply says `"ok":true`,
//! 1 on an error reply or a failed connection, 2 on bad usage. std-only and static-friendly:
//! the nested harness runs it inside L1, where no other client exists.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

const COMMANDS: [&str; 5] = ["pause", "resume", "shutdown", "state", "metrics"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(sock), Some(cmd)) = (args.first(), args.get(1)) else {
        eprintln!(
            "usage: hull-vmm-ctl SOCK CMD [TIMEOUT_S]   CMD: {}",
            COMMANDS.join("|")
        );
        return ExitCode::from(2);
    };
    if !COMMANDS.contains(&cmd.as_str()) {
        eprintln!(
            "hull-vmm-ctl: unknown command {cmd:?} ({})",
            COMMANDS.join("|")
        );
        return ExitCode::from(2);
    }
    let timeout = Duration::from_secs(args.get(2).and_then(|t| t.parse().ok()).unwrap_or(10));
    match ask(sock, cmd, timeout) {
        Ok(reply) => {
            println!("{reply}");
            if reply.contains("\"ok\":true") {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("hull-vmm-ctl: {sock}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn ask(sock: &str, cmd: &str, timeout: Duration) -> std::io::Result<String> {
    let s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    (&s).write_all(format!("{{\"cmd\":\"{cmd}\"}}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without a reply",
        ));
    }
    Ok(line.trim_end().to_string())
}
