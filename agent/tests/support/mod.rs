//! Test support: a host-mode hull-agent with a share directory, a busybox rootfs, and a
//! client that opens stdio streams the way the shim does.

#![allow(dead_code)]

pub mod conformance;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hull_protocol::agent::*;
use hull_protocol::agent_ttrpc::AgentClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Debian's busybox-static, the only binary in test rootfs.
pub const BUSYBOX: &str = "/bin/busybox";

pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(30_000_000_000)
}

/// A host-mode agent serving containers from `share`.
pub struct HostAgent {
    pub dir: tempfile::TempDir,
    pub share: PathBuf,
    pub sock: PathBuf,
    pub child: Child,
    pub client: AgentClient,
}

impl HostAgent {
    pub async fn start() -> HostAgent {
        assert!(
            nix::unistd::geteuid().is_root(),
            "container tests create namespaces and cgroups: run them as root"
        );
        assert!(
            Path::new(BUSYBOX).exists(),
            "{BUSYBOX} missing: apt-get install busybox-static"
        );
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&share).unwrap();
        let sock = dir.path().join("agent.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_hull-agent"))
            .args(["--listen", &format!("unix:{}", sock.display())])
            .args(["--share-dir", share.to_str().unwrap()])
            .args(["--state-dir", state.to_str().unwrap()])
            .args(["--log-level", "debug"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !sock.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "agent did not listen"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let client = AgentClient::new(
            ttrpc::r#async::Client::connect(&format!("unix://{}", sock.display()))
                .await
                .unwrap(),
        );
        HostAgent {
            dir,
            share,
            sock,
            child,
            client,
        }
    }

    /// Builds `<share>/<name>/rootfs` with busybox and its applets.
    pub fn rootfs(&self, name: &str) -> String {
        busybox_rootfs(&self.share.join(name).join("rootfs"));
        format!("{name}/rootfs")
    }

    /// Opens a stdio stream named `id`.
    pub async fn stream(&self, id: &str) -> UnixStream {
        let mut s = UnixStream::connect(format!("{}.stdio", self.sock.display()))
            .await
            .unwrap();
        s.write_all(format!("STREAM {id}\n").as_bytes())
            .await
            .unwrap();
        s
    }

    /// Live processes whose cwd or root is under this agent's temp dir (container leftovers).
    pub fn leftover_processes(&self) -> Vec<u32> {
        let needle = self.dir.path();
        let mut out = vec![];
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == self.child.id() {
                continue;
            }
            let root = std::fs::read_link(e.path().join("root")).ok();
            if root.is_some_and(|r| r.starts_with(needle)) {
                out.push(pid);
            }
        }
        out
    }
}

/// cgroup directories of container `id` that still exist (v1 hierarchies or v2).
pub fn leftover_cgroups(id: &str) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let p = e.path().join("hull").join(id);
        if p.is_dir() {
            out.push(p);
        }
    }
    let v2 = Path::new("/sys/fs/cgroup/hull").join(id);
    if v2.is_dir() {
        out.push(v2);
    }
    out
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

impl Drop for HostAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
