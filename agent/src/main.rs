//! hull-agent: PID 1 of every hull microVM.
//!
//! As PID 1 (inside the guest) it mounts the base filesystems, reaps orphans, serves the
//! agent API (`hull-protocol`) on vsock port 1024 and announces readiness to the host. It
//! never exits: errors are logged to the console and reported, because PID 1 exiting panics
//! the guest. With `--listen unix:PATH` it runs as an ordinary host process (for tests).

mod init;
mod logger;
mod ready;
mod service;

use std::process::ExitCode;

use hull_protocol::{agent_ttrpc::create_agent, AGENT_VSOCK_PORT};
use log::LevelFilter;
use service::{AgentService, ShutdownAction};
use tokio::sync::mpsc;

const USAGE: &str = "usage: hull-agent [--listen vsock|unix:PATH] [--log-level LEVEL]";

#[derive(Debug, PartialEq, Eq)]
enum Listen {
    Vsock,
    Unix(String),
}

#[derive(Debug, PartialEq, Eq)]
struct Options {
    listen: Listen,
    level: LevelFilter,
}

fn parse_args(args: &[String], env_level: Option<&str>) -> Result<Options, String> {
    let mut opts = Options {
        listen: Listen::Vsock,
        level: env_level
            .and_then(logger::parse_level)
            .unwrap_or(LevelFilter::Info),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => {
                let v = it.next().ok_or("--listen needs a value")?;
                opts.listen = match v.strip_prefix("unix:") {
                    Some(p) if !p.is_empty() => Listen::Unix(p.to_string()),
                    _ if v == "vsock" => Listen::Vsock,
                    _ => return Err(format!("--listen {v}: expected vsock or unix:PATH")),
                };
            }
            "--log-level" => {
                let v = it.next().ok_or("--log-level needs a value")?;
                opts.level =
                    logger::parse_level(v).ok_or(format!("--log-level {v}: unknown level"))?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(opts)
}

async fn serve(opts: Options, pid1: bool) -> Result<ShutdownAction, ttrpc::Error> {
    let (shutdown_tx, mut shutdown_rx) = mpsc::channel(1);
    let service = create_agent(AgentService::new(pid1, shutdown_tx));
    let addr = match &opts.listen {
        Listen::Vsock => format!("vsock://-1:{AGENT_VSOCK_PORT}"),
        Listen::Unix(p) => {
            // A stale socket from an earlier run would make bind fail.
            let _ = std::fs::remove_file(p);
            format!("unix://{p}")
        }
    };
    let mut server = ttrpc::r#async::Server::new()
        .bind(&addr)?
        .register_service(service);
    server.start().await?;
    log::info!("serving the agent API on {addr}");
    if opts.listen == Listen::Vsock {
        tokio::spawn(ready::announce());
    }
    let action = shutdown_rx
        .recv()
        .await
        .unwrap_or(ShutdownAction::ExitProcess);
    // Let the Shutdown reply leave before the connection goes away.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let _ = server.shutdown().await;
    Ok(action)
}

fn main() -> ExitCode {
    let pid1 = std::process::id() == 1;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let env_level = std::env::var("hull_log").ok();
    let opts = match parse_args(&args, env_level.as_deref()) {
        Ok(o) => o,
        Err(e) if !pid1 => {
            eprintln!("hull-agent: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
        Err(e) => {
            // PID 1 must not exit on bad arguments; serve with defaults instead.
            eprintln!("hull-agent: {e}; using defaults");
            Options {
                listen: Listen::Vsock,
                level: LevelFilter::Info,
            }
        }
    };
    logger::init(opts.level);
    if pid1 {
        let report = init::setup_pid1();
        for e in &report.errors {
            log::error!("init: {e}");
        }
        log::info!("init: {} filesystems mounted", report.mounted.len());
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("starting the async runtime: {e}");
            return park_or_exit(pid1, 1);
        }
    };
    let result = runtime.block_on(async {
        if pid1 {
            tokio::spawn(init::reap_children());
        }
        serve(opts, pid1).await
    });
    match result {
        Ok(ShutdownAction::RebootGuest) => reboot(),
        Ok(ShutdownAction::ExitProcess) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("agent server: {e}");
            park_or_exit(pid1, 1)
        }
    }
}

/// Ends the VM: with `reboot=t` and no ACPI, a reboot is the exit the VMM sees.
fn reboot() -> ExitCode {
    nix::unistd::sync();
    log::info!("rebooting the guest");
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    log::error!("reboot: {e}");
    park_or_exit(true, 1)
}

/// PID 1 must never exit (the kernel would panic); it sleeps forever instead and the host
/// sees an agent that stopped answering. A host-mode agent simply exits.
fn park_or_exit(pid1: bool, code: u8) -> ExitCode {
    if pid1 {
        loop {
            std::thread::park();
        }
    }
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn defaults_are_vsock_and_info_or_the_kernel_cmdline_level() {
        assert_eq!(
            parse_args(&[], None).unwrap(),
            Options {
                listen: Listen::Vsock,
                level: LevelFilter::Info
            }
        );
        assert_eq!(
            parse_args(&[], Some("debug")).unwrap().level,
            LevelFilter::Debug
        );
        assert_eq!(
            parse_args(&[], Some("bogus")).unwrap().level,
            LevelFilter::Info
        );
    }

    #[test]
    fn listen_and_level_flags_parse() {
        let o = parse_args(
            &s(&["--listen", "unix:/tmp/a.sock", "--log-level", "warn"]),
            None,
        )
        .unwrap();
        assert_eq!(o.listen, Listen::Unix("/tmp/a.sock".into()));
        assert_eq!(o.level, LevelFilter::Warn);
    }

    #[test]
    fn bad_arguments_name_what_was_wrong() {
        assert!(parse_args(&s(&["--listen", "tcp:1"]), None)
            .unwrap_err()
            .contains("tcp:1"));
        assert!(parse_args(&s(&["--listen", "unix:"]), None).is_err());
        assert!(parse_args(&s(&["--listen"]), None)
            .unwrap_err()
            .contains("needs a value"));
        assert!(parse_args(&s(&["--log-level", "loud"]), None)
            .unwrap_err()
            .contains("loud"));
        assert!(parse_args(&s(&["--frobnicate"]), None)
            .unwrap_err()
            .contains("--frobnicate"));
    }
}
