//! Runs one OCI bundle under runc (the reference) or under a host-mode hull-agent and
//! captures what the differential conformance test compares: stdout, stderr, exit status
//! and (hull only) the OOM flag.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hull_protocol::agent::*;
use oci_spec::runtime::Spec;
use tokio::io::AsyncWriteExt;

use super::{busybox_rootfs, ctx, read_all, stdio, Target};

/// Debian's runc, the reference runtime.
pub const RUNC: &str = "/usr/sbin/runc";

/// How long one container may take under either runtime.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// What a container run produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// runc's convention: exit code, or 128 + signal.
    pub exit: i32,
    /// `WaitProcess.oom_killed` (hull only; runc has no such report).
    pub oom: Option<bool>,
    /// A request the agent refused (hull only; runc reports failures as exit status 1 and a
    /// message on stderr).
    pub error: Option<String>,
}

/// How the container is fed.
#[derive(Debug, Clone, Default)]
pub struct Io {
    /// Bytes on stdin, then EOF; `None` = stdin is /dev/null.
    pub stdin: Option<Vec<u8>>,
    /// `process.terminal = true`.
    pub tty: bool,
}

/// runc with a private state root (`--root`), bundles in a temp dir.
pub struct Runc {
    pub dir: tempfile::TempDir,
}

/// The cgroup path runc gets for container `id` (its own top-level directory, which runc
/// removes on exit).
pub fn runc_cgroup(id: &str) -> String {
    format!("/hull-runc-{id}")
}

impl Runc {
    pub fn new() -> Runc {
        assert!(
            Path::new(RUNC).exists(),
            "{RUNC} missing: apt-get install runc (the conformance reference)"
        );
        Runc {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Runs `spec` (its root.path is replaced) as container `id`, foreground, as
    /// `runc run --bundle DIR ID` with stdio piped (or on a pty, for a terminal).
    pub async fn run(&self, id: &str, spec: &Spec, io: &Io) -> Outcome {
        let bundle = self.dir.path().join("bundles").join(id);
        let rootfs = bundle.join("rootfs");
        busybox_rootfs(&rootfs);
        let mut spec = spec.clone();
        let mut root = spec.root().clone().unwrap_or_default();
        root.set_path(rootfs);
        spec.set_root(Some(root));
        let mut linux = spec.linux().clone().unwrap_or_default();
        linux.set_cgroups_path(Some(runc_cgroup(id).into()));
        spec.set_linux(Some(linux));
        spec.save(bundle.join("config.json")).unwrap();
        let mut cmd = Command::new(RUNC);
        cmd.arg("--root")
            .arg(self.root())
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(id);
        let io = io.clone();
        let out = tokio::time::timeout(
            RUN_TIMEOUT,
            tokio::task::spawn_blocking(move || {
                if io.tty {
                    run_on_pty(cmd, io.stdin)
                } else {
                    run_piped(cmd, io.stdin)
                }
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("runc run {id} took more than {RUN_TIMEOUT:?}"))
        .unwrap();
        std::fs::remove_dir_all(&bundle).unwrap();
        out
    }

    /// Containers runc still knows about (must be none after a foreground run).
    pub fn leftovers(&self) -> String {
        let out = Command::new(RUNC)
            .arg("--root")
            .arg(self.root())
            .args(["list", "-q"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn exit_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn run_piped(mut cmd: Command, stdin: Option<Vec<u8>>) -> Outcome {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let writer = child.stdin.take().map(|mut w| {
        let data = stdin.unwrap_or_default();
        std::thread::spawn(move || {
            // The container may exit without reading everything.
            let _ = w.write_all(&data);
        })
    });
    let out = child.wait_with_output().unwrap();
    if let Some(w) = writer {
        w.join().unwrap();
    }
    Outcome {
        stdout: out.stdout,
        stderr: out.stderr,
        exit: exit_of(out.status),
        oom: None,
        error: None,
    }
}

/// A foreground `runc run` with a terminal requires its own stdin to be a terminal (it sets
/// it raw and copies between it and the container's pty): give it a pty of ours and read
/// everything that comes out of its master.
fn run_on_pty(mut cmd: Command, stdin: Option<Vec<u8>>) -> Outcome {
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave: OwnedFd = pty.slave;
    // runc sets it raw itself, but only once the container runs: early output would still
    // get the host pty's \n -> \r\n on top of the container pty's.
    let mut t = nix::sys::termios::tcgetattr(&slave).unwrap();
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(&slave, nix::sys::termios::SetArg::TCSANOW, &t).unwrap();
    cmd.stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave);
    let mut child = cmd.spawn().unwrap();
    drop(cmd); // our copies of the slave: EIO on the master once runc is gone
    let mut master = std::fs::File::from(pty.master);
    if let Some(data) = stdin {
        master.write_all(&data).unwrap();
    }
    let mut stdout = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match master.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => stdout.extend_from_slice(&buf[..n]),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => panic!("reading the pty: {e}"),
        }
    }
    let status = child.wait().unwrap();
    Outcome {
        stdout,
        stderr: vec![],
        exit: exit_of(status),
        oom: None,
        error: None,
    }
}

/// Runs `spec` as container `id` through the agent: create, start, feed stdin, collect the
/// output, wait, remove.
pub async fn run_hull<T: Target>(agent: &T, id: &str, spec: &Spec, io: &Io) -> Outcome {
    tokio::time::timeout(RUN_TIMEOUT, run_hull_inner(agent, id, spec, io))
        .await
        .unwrap_or_else(|_| panic!("hull run {id} took more than {RUN_TIMEOUT:?}"))
}

async fn run_hull_inner<T: Target>(agent: &T, id: &str, spec: &Spec, io: &Io) -> Outcome {
    let rootfs = agent.rootfs(id);
    let (sin, sout, serr) = (format!("{id}-in"), format!("{id}-out"), format!("{id}-err"));
    let input = match io.stdin {
        Some(_) => Some(agent.stream(&sin).await),
        None => None,
    };
    let out = agent.stream(&sout).await;
    let err = match io.tty {
        false => Some(agent.stream(&serr).await),
        true => None,
    };
    let req = CreateContainerRequest {
        container_id: id.into(),
        spec_json: serde_json::to_vec(spec).unwrap(),
        rootfs,
        stdio: stdio(
            if input.is_some() { &sin } else { "" },
            &sout,
            if err.is_some() { &serr } else { "" },
        ),
        ..Default::default()
    };
    if let Err(e) = agent.client().create_container(ctx(), &req).await {
        return Outcome {
            stdout: vec![],
            stderr: vec![],
            exit: -1,
            oom: None,
            error: Some(format!("CreateContainer: {e:?}")),
        };
    }
    let container = ContainerRequest {
        container_id: id.into(),
        ..Default::default()
    };
    agent
        .client()
        .start_container(ctx(), &container)
        .await
        .unwrap_or_else(|e| panic!("start {id}: {e:?}"));
    let feed = async {
        if let (Some(mut s), Some(data)) = (input, io.stdin.as_ref()) {
            // The container may exit without reading everything.
            let _ = s.write_all(data).await;
            let _ = s.shutdown().await;
        }
    };
    let collect_err = async {
        match err {
            Some(e) => read_all(e).await,
            None => vec![],
        }
    };
    let wait = ProcessRequest {
        container_id: id.into(),
        ..Default::default()
    };
    let ((), stdout, stderr, w) = tokio::join!(
        feed,
        read_all(out),
        collect_err,
        agent.client().wait_process(ctx(), &wait)
    );
    let w = w.unwrap_or_else(|e| panic!("wait {id}: {e:?}"));
    agent
        .client()
        .remove_container(ctx(), &container)
        .await
        .unwrap_or_else(|e| panic!("remove {id}: {e:?}"));
    Outcome {
        stdout,
        stderr,
        exit: w.exit_status,
        oom: Some(w.oom_killed),
        error: None,
    }
}
