//! Test support: a host-mode hull-agent with a share directory, a busybox rootfs, and a
//! client that opens stdio streams the way the shim does.

#![allow(dead_code)]

pub mod common;
pub mod conformance;
pub mod corpus;

pub use common::*;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hull_protocol::agent_ttrpc::AgentClient;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hull-agent"));
        cmd.args(["--listen", &format!("unix:{}", sock.display())])
            .args(["--share-dir", share.to_str().unwrap()])
            .args(["--state-dir", state.to_str().unwrap()])
            .args(["--log-level", "debug"])
            .stdin(Stdio::null());
        // SAFETY: prctl(2) is async-signal-safe and touches only the child's own state.
        // A test binary that dies (a panic in a spawned task, a timeout) takes the agent
        // and, through it, its containers with it.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
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

impl Target for HostAgent {
    fn client(&self) -> &AgentClient {
        &self.client
    }

    fn rootfs(&self, name: &str) -> String {
        HostAgent::rootfs(self, name)
    }

    fn stream(&self, id: &str) -> impl std::future::Future<Output = UnixStream> + Send {
        HostAgent::stream(self, id)
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
