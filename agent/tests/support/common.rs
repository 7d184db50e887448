//! Test support shared by the agent's host-mode tests and the in-VM conformance run in
//! `tests/` (which includes this file with `#[path]`): busybox rootfs, base spec, stdio
//! helpers, and [`Target`], the agent a test drives (host-mode or in a VM).

#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::process::Command;

use hull_protocol::agent::*;
use hull_protocol::agent_ttrpc::AgentClient;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

/// Debian's busybox-static, the only binary in test rootfs.
pub const BUSYBOX: &str = "/bin/busybox";

/// An agent a test drives: its client, where container rootfs go, and its stdio streams.
pub trait Target: Send + Sync {
    /// The ttrpc client.
    fn client(&self) -> &AgentClient;
    /// Builds a busybox rootfs for container `name` in the share; returns the path the
    /// agent expects in `CreateContainerRequest.rootfs`.
    fn rootfs(&self, name: &str) -> String;
    /// Opens the stdio stream named `id`.
    fn stream(&self, id: &str) -> impl Future<Output = UnixStream> + Send;
}

pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(30_000_000_000)
}

/// Builds a rootfs at `root`: a copy of busybox (a copy, not a link: a container may write
/// to it), a symlink per applet, /etc/passwd and /etc/group.
pub fn busybox_rootfs(root: &Path) {
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nnobody:x:65534:\n").unwrap();
}

/// A runc-like default spec running `args`, without a terminal.
pub fn spec(args: &[&str]) -> oci_spec::runtime::Spec {
    let mut spec = oci_spec::runtime::Spec::default();
    let mut p = spec.process().clone().unwrap();
    p.set_terminal(Some(false));
    p.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    spec.set_process(Some(p));
    spec
}

pub fn spec_json(spec: &oci_spec::runtime::Spec) -> Vec<u8> {
    serde_json::to_vec(spec).unwrap()
}

/// Reads a stream to EOF.
pub async fn read_all(mut s: UnixStream) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).await.unwrap();
    v
}

pub fn stdio(stdin: &str, stdout: &str, stderr: &str) -> protobuf::MessageField<StdioStreams> {
    protobuf::MessageField::some(StdioStreams {
        stdin: stdin.into(),
        stdout: stdout.into(),
        stderr: stderr.into(),
        ..Default::default()
    })
}

pub use hull_protocol::protobuf;
