//! hull-agent: PID 1 of every hull microVM.
//!
//! As PID 1 (inside the guest) it mounts the base filesystems, reaps orphans, serves the
//! agent API (`hull-protocol`) on vsock port 1024 and announces readiness to the host. It
//! never exits: errors are logged to the console and reported, because PID 1 exiting panics
//! the guest. With `--listen unix:PATH` it runs as an ordinary host process (for tests).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use hull_agent::reaper::Reaper;
use hull_agent::sandbox::{Sandbox, SandboxConfig};
use hull_agent::service::{AgentService, ShutdownAction};
use hull_agent::streams::{Stream, StreamRegistry};
use hull_agent::{init, logger, ready};
use hull_protocol::{agent_ttrpc::create_agent, AGENT_VSOCK_PORT, STDIO_VSOCK_PORT};
use log::LevelFilter;
use tokio::sync::mpsc;

const USAGE: &str = "usage: hull-agent [--listen vsock|unix:PATH] [--log-level LEVEL] \
                     [--share-dir DIR] [--state-dir DIR]";

/// In the guest: where the pod share is mounted and where container state lives.
const GUEST_SHARE_ROOT: &str = "/run/hull/share";
const GUEST_STATE_ROOT: &str = "/run/hull/agent";

#[derive(Debug, PartialEq, Eq)]
enum Listen {
    Vsock,
    Unix(String),
}

#[derive(Debug, PartialEq, Eq)]
struct Options {
    listen: Listen,
    level: LevelFilter,
    share_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
}

fn parse_args(args: &[String], env_level: Option<&str>) -> Result<Options, String> {
    let mut opts = Options {
        listen: Listen::Vsock,
        level: env_level
            .and_then(logger::parse_level)
            .unwrap_or(LevelFilter::Info),
        share_dir: None,
        state_dir: None,
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
            "--share-dir" => {
                opts.share_dir = Some(it.next().ok_or("--share-dir needs a value")?.into())
            }
            "--state-dir" => {
                opts.state_dir = Some(it.next().ok_or("--state-dir needs a value")?.into())
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(opts)
}

/// Accepts stdio streams on vsock (guest) or `<socket>.stdio` (host mode).
fn serve_streams(listen: &Listen, registry: Arc<StreamRegistry>) -> std::io::Result<()> {
    match listen {
        Listen::Vsock => {
            let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, STDIO_VSOCK_PORT);
            let listener = Arc::new(tokio_vsock::VsockListener::bind(addr)?);
            tokio::spawn(registry.serve(move || {
                let l = listener.clone();
                async move { l.accept().await.map(|(s, _)| Box::pin(s) as Stream) }
            }));
        }
        Listen::Unix(p) => {
            let path = format!("{p}.stdio");
            let _ = std::fs::remove_file(&path);
            let listener = Arc::new(tokio::net::UnixListener::bind(&path)?);
            tokio::spawn(registry.serve(move || {
                let l = listener.clone();
                async move { l.accept().await.map(|(s, _)| Box::pin(s) as Stream) }
            }));
        }
    }
    Ok(())
}

async fn serve(
    opts: Options,
    pid1: bool,
    reaper: Arc<Reaper>,
) -> Result<ShutdownAction, ttrpc::Error> {
    let (shutdown_tx, mut shutdown_rx) = mpsc::channel(1);
    let registry = Arc::new(StreamRegistry::default());
    let sandbox = match (&opts.listen, &opts.share_dir) {
        // In the guest the sandbox always exists; in host mode only with a share directory.
        (Listen::Vsock, _) | (_, Some(_)) => {
            let cfg = SandboxConfig {
                share_root: opts
                    .share_dir
                    .clone()
                    .unwrap_or_else(|| GUEST_SHARE_ROOT.into()),
                state_root: opts
                    .state_dir
                    .clone()
                    .unwrap_or_else(|| GUEST_STATE_ROOT.into()),
                no_pivot: pid1,
                owns_machine: pid1,
            };
            if let Err(e) = serve_streams(&opts.listen, registry.clone()) {
                log::error!("cannot accept stdio streams: {e}");
            }
            Some(Sandbox::new(cfg, reaper, registry))
        }
        _ => None,
    };
    let service = create_agent(AgentService::new(pid1, shutdown_tx, sandbox));
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
    // ttrpc's graceful shutdown waits for requests in flight, and the shim's GetOomEvent
    // long poll is always in flight: without a bound every pod stop waited ~5 s for it.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(200), server.shutdown()).await;
    Ok(action)
}

fn main() -> ExitCode {
    let pid1 = std::process::id() == 1;
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(hull_agent::build::HELPER_ARG) {
        return hull_agent::build::helper_main(args.get(1).map(String::as_str));
    }
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
                share_dir: None,
                state_dir: None,
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
    if !pid1 {
        // Host mode: become the reaper of the containers' processes, which libcontainer
        // detaches from their intermediate parents.
        // Without it no container's exit would reach WaitProcess: fatal.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            log::error!("cannot become a child subreaper: {e}");
            return ExitCode::FAILURE;
        }
    }
    let reaper = Arc::new(Reaper::default());
    let result = runtime.block_on(async {
        tokio::spawn(reaper.clone().run());
        serve(opts, pid1, reaper).await
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
                level: LevelFilter::Info,
                share_dir: None,
                state_dir: None,
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
    fn share_and_state_dirs_parse() {
        let o = parse_args(&s(&["--share-dir", "/s", "--state-dir", "/t"]), None).unwrap();
        assert_eq!(o.share_dir, Some(PathBuf::from("/s")));
        assert_eq!(o.state_dir, Some(PathBuf::from("/t")));
        assert!(parse_args(&s(&["--share-dir"]), None).is_err());
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
