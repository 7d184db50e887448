//! The real hull-agent binary in host mode (`--listen unix:PATH`): the same service code as
//! in the guest, reached over a unix socket instead of vsock.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use hull_protocol::agent::*;

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(5_000_000_000)
}

#[tokio::test]
async fn host_mode_serves_version_and_exits_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hull-agent"))
        .args(["--listen", &format!("unix:{}", sock.display())])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let client = support::connect_agent(&sock, &mut child).await;
    client.check(ctx(), &CheckRequest::new()).await.unwrap();
    let v = client.version(ctx(), &VersionRequest::new()).await.unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(v.kernel_release, host.trim());
    assert!(!v.pid1);
    assert_eq!(v.agent_version, env!("CARGO_PKG_VERSION"));

    client
        .shutdown(ctx(), &ShutdownRequest::new())
        .await
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "agent did not exit after Shutdown"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(status.success(), "{status}");
}

#[test]
fn bad_arguments_exit_2_naming_the_argument() {
    let out = Command::new(env!("CARGO_BIN_EXE_hull-agent"))
        .args(["--listen", "tcp:1234"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tcp:1234"));
}
