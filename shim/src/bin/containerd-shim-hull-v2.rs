//! `containerd-shim-hull-v2`: the containerd runtime v2 shim of hull (`io.containerd.hull.v2`).
//! See `hull_shim::task`.
//!
//! The `delete` action and the `-info` query run through the containerd-shim crate. `start`
//! and serving are done here because containerd-shim 0.12 speaks only to newer containerds:
//! containerd 1.6 reads a bare address from `start` (not the crate's JSON/protobuf reply)
//! and calls the Task service as `containerd.task.v2.Task` (the crate registers only
//! `containerd.task.v3.Task`, whose messages are the same on the wire).

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use containerd_shim::asynchronous::Shim;
use containerd_shim::protos::shim_async::create_task;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, Flags};
use hull_shim::task::HullShim;

const RUNTIME_ID: &str = "io.containerd.hull.v2";

async fn start(flags: &Flags) -> ExitCode {
    let opts = hull_shim::task::legacy_start_opts(flags);
    match hull_shim::task::start_pod_shim(opts).await {
        Ok(address) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(address.as_bytes());
            let _ = out.flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{RUNTIME_ID}: start: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(flags: Flags) -> Result<(), String> {
    if let Err(e) = containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id)
    {
        eprintln!("{RUNTIME_ID}: logger: {e}");
    }
    let mut shim = HullShim::new(RUNTIME_ID, &flags, &mut Config::default()).await;
    let ttrpc_address =
        std::env::var("TTRPC_ADDRESS").map_err(|_| "TTRPC_ADDRESS is not set".to_string())?;
    let publisher = RemotePublisher::new(&ttrpc_address)
        .await
        .map_err(|e| format!("connecting to containerd's events: {e}"))?;
    let task = Arc::new(shim.create_task_service(publisher).await);
    let mut services = create_task(task.clone());
    if let Some(v3) = create_task(task).remove("containerd.task.v3.Task") {
        services.insert("containerd.task.v2.Task".to_string(), v3);
    }
    let path = flags
        .socket
        .strip_prefix("unix://")
        .unwrap_or(&flags.socket);
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let mut server = ttrpc::r#async::Server::new()
        .bind(&flags.socket)
        .map_err(|e| format!("listening on {}: {e}", flags.socket))?
        .register_service(services);
    server.start().await.map_err(|e| format!("serving: {e}"))?;
    // `start` waits for our stdout to close: point it at stderr (containerd's log).
    // SAFETY: dup2 on two fds this process owns; it only replaces fd 1.
    unsafe {
        libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO);
    }
    log::info!("serving {RUNTIME_ID} on {}", flags.socket);
    shim.wait().await;
    let _ = server.shutdown().await;
    let _ = std::fs::remove_file(path);
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flags = match containerd_shim::parse(&args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match flags.action.as_str() {
        "start" => start(&flags).await,
        "" if !flags.info && !flags.version => {
            let code = match serve(flags).await {
                Ok(()) => 0,
                Err(e) => {
                    log::error!("{e}");
                    eprintln!("{RUNTIME_ID}: {e}");
                    1
                }
            };
            // Everything is stopped and cleaned by now; exit without waiting for blocking
            // threads (a FIFO open of a client that went away must not keep the shim alive).
            std::process::exit(code);
        }
        _ => {
            containerd_shim::asynchronous::run::<HullShim>(RUNTIME_ID, None).await;
            ExitCode::SUCCESS
        }
    }
}
