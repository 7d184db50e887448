//! libcontainer's `build()` in a fresh, single-threaded process.
//!
//! libcontainer forks with a raw `clone3`, which runs none of libc's fork handlers. From the
//! multi-threaded agent, the child can inherit a lock that another thread held at that
//! instant (the allocator's, the logger's) and block on it forever. The create then never
//! returns, and it holds the fork lock, so every later create and the reaper wait behind it:
//! the VM stops serving. (Seen once in CI under heavy load.)
//!
//! So the agent runs `build()` in a helper: its own binary exec'd afresh with
//! [`HELPER_ARG`], one thread, nobody else's locks. The helper builds the container (the
//! new process is its child, or its intermediate's sibling), writes a [`Reply`] to a file
//! and exits; the new process, orphaned, becomes the agent's child (PID 1, or the child
//! subreaper in host mode). The caller holds the reaper's fork lock throughout, so nothing
//! reaps the helper or the new process before it is registered.
//!
//! Youki's own CLI is single-threaded for the same reason; Kata's agent forks a fresh
//! process for container creation as well.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;
use serde_json::{json, Value};

/// The first argument that makes `hull-agent` a build helper.
pub const HELPER_ARG: &str = "--build-container";

/// The helper's binary: the agent's own.
const SELF_EXE: &str = "/proc/self/exe";

/// How long a build may take before the helper is killed. A build waits only for the
/// container's own setup (mounts, cgroup, namespaces); this bounds a hang there.
const BUILD_TIMEOUT: Duration = Duration::from_secs(60);

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A container's init process from an OCI bundle.
    Init {
        /// The bundle (with config.json).
        bundle: PathBuf,
        /// Switch root with MS_MOVE + chroot instead of pivot_root.
        no_pivot: bool,
    },
    /// A process in a running container, described by an OCI process JSON file.
    Tenant {
        /// The process file.
        process: PathBuf,
    },
}

/// A build request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The container id.
    pub id: String,
    /// libcontainer's state root.
    pub state_root: PathBuf,
    /// The console socket, for a process with a terminal.
    pub console_socket: Option<PathBuf>,
    /// Whether the helper's stdin, stdout and stderr are the process's (else it has a
    /// terminal, or inherits nothing useful).
    pub piped_stdio: bool,
    /// What to build.
    pub kind: Kind,
    /// Where the helper writes its [`Reply`].
    pub reply: PathBuf,
}

/// How a build failed, as far as the caller's error code cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The request was invalid (bad id, bad spec).
    Invalid,
    /// The container is in the wrong state.
    Precondition,
    /// Anything else.
    Internal,
}

/// The helper's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Built: the new process's pid.
    Built(i32),
    /// Failed, with libcontainer's message.
    Failed(Failure, String),
}

/// Why a build could not even be attempted or answered.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The helper could not be started.
    #[error("starting the build helper {SELF_EXE}: {0}")]
    Spawn(#[source] std::io::Error),
    /// The helper ran past [`BUILD_TIMEOUT`] and was killed.
    #[error("the build helper did not finish within {0:?} and was killed")]
    Timeout(Duration),
    /// The helper ended without a readable reply.
    #[error("the build helper ended ({status}) without a reply: {reason}")]
    NoReply {
        /// How it ended.
        status: String,
        /// Why the reply could not be read.
        reason: String,
    },
}

impl Request {
    fn to_json(&self) -> Value {
        let kind = match &self.kind {
            Kind::Init { bundle, no_pivot } => {
                json!({"init": {"bundle": bundle, "no_pivot": no_pivot}})
            }
            Kind::Tenant { process } => json!({"tenant": {"process": process}}),
        };
        json!({
            "id": self.id,
            "state_root": self.state_root,
            "console_socket": self.console_socket,
            "piped_stdio": self.piped_stdio,
            "kind": kind,
            "reply": self.reply,
        })
    }

    fn from_json(text: &str) -> Result<Request, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let string = |v: &Value, key: &str| {
            v.get(key)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or(format!("{key} missing"))
        };
        let kind = match (v["kind"].get("init"), v["kind"].get("tenant")) {
            (Some(i), None) => Kind::Init {
                bundle: string(i, "bundle")?.into(),
                no_pivot: i["no_pivot"].as_bool().ok_or("no_pivot missing")?,
            },
            (None, Some(t)) => Kind::Tenant {
                process: string(t, "process")?.into(),
            },
            _ => return Err("kind must be init or tenant".into()),
        };
        Ok(Request {
            id: string(&v, "id")?,
            state_root: string(&v, "state_root")?.into(),
            console_socket: v["console_socket"].as_str().map(PathBuf::from),
            piped_stdio: v["piped_stdio"].as_bool().ok_or("piped_stdio missing")?,
            kind,
            reply: string(&v, "reply")?.into(),
        })
    }
}

impl Reply {
    fn to_json(&self) -> Value {
        match self {
            Reply::Built(pid) => json!({"pid": pid}),
            Reply::Failed(f, message) => {
                let class = match f {
                    Failure::Invalid => "invalid",
                    Failure::Precondition => "precondition",
                    Failure::Internal => "internal",
                };
                json!({"failure": class, "message": message})
            }
        }
    }

    fn from_json(text: &str) -> Result<Reply, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if let Some(pid) = v["pid"].as_i64() {
            let pid = i32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
            return Ok(Reply::Built(pid));
        }
        let failure = match v["failure"].as_str() {
            Some("invalid") => Failure::Invalid,
            Some("precondition") => Failure::Precondition,
            Some("internal") => Failure::Internal,
            other => return Err(format!("unknown failure {other:?}")),
        };
        let message = v["message"].as_str().ok_or("message missing")?.to_string();
        Ok(Reply::Failed(failure, message))
    }
}

impl Request {
    /// Where libcontainer writes the new process's pid, as soon as it exists: how a build
    /// whose helper died is found and undone.
    fn pid_file(&self) -> PathBuf {
        self.reply.with_extension("pid")
    }

    fn remove_files(&self) {
        for f in [
            self.reply.clone(),
            self.reply.with_extension("tmp"),
            self.pid_file(),
        ] {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Undoes a build whose outcome the caller cannot use (the helper died or timed out, or
/// the state it left cannot be loaded): kills the new process if it got as far as having
/// a pid, and for a container removes what libcontainer made of it (state, cgroup).
pub fn abandon(req: &Request) {
    let pid = std::fs::read_to_string(req.pid_file())
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .filter(|&p| p > 1);
    if let Some(pid) = pid {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    if matches!(req.kind, Kind::Init { .. }) {
        let dir = req.state_root.join(&req.id);
        let deleted =
            libcontainer::container::Container::load(dir.clone()).and_then(|mut c| c.delete(true));
        if let Err(e) = deleted {
            log::warn!("container {}: undoing a failed build: {e}", req.id);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    req.remove_files();
}

/// Runs a build in a helper and waits for its reply (blocking). `stdio` becomes the
/// process's stdin, stdout and stderr (and is closed here once the helper has it). On an
/// error the build is undone ([`abandon`]).
pub fn run(req: &Request, stdio: Option<[OwnedFd; 3]>) -> Result<Reply, HelperError> {
    req.remove_files();
    let mut cmd = Command::new(SELF_EXE);
    cmd.arg(HELPER_ARG).arg(req.to_json().to_string());
    match stdio {
        Some([i, o, e]) => {
            cmd.stdin(Stdio::from(i))
                .stdout(Stdio::from(o))
                .stderr(Stdio::from(e));
        }
        None => {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
        }
    }
    let mut child = cmd.spawn().map_err(HelperError::Spawn)?;
    // The builder's copies of the process's fds are closed with `cmd`.
    drop(cmd);
    let deadline = Instant::now() + BUILD_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                abandon(req);
                return Err(HelperError::Timeout(BUILD_TIMEOUT));
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                abandon(req);
                return Err(HelperError::NoReply {
                    status: "unknown".into(),
                    reason: format!("waiting for it: {e}"),
                });
            }
        }
    };
    let reply = std::fs::read_to_string(&req.reply)
        .map_err(|e| e.to_string())
        .and_then(|t| Reply::from_json(&t));
    match reply {
        Ok(reply) => {
            req.remove_files();
            Ok(reply)
        }
        Err(reason) => {
            abandon(req);
            Err(HelperError::NoReply {
                status: status.to_string(),
                reason,
            })
        }
    }
}

/// The helper process: builds what `request` (JSON) asks for and writes the reply. Must
/// print nothing: its stdout and stderr may be the container's.
pub fn helper_main(request: Option<&str>) -> ExitCode {
    std::panic::set_hook(Box::new(|_| {}));
    let Some(req) = request.and_then(|r| Request::from_json(r).ok()) else {
        return ExitCode::from(2);
    };
    let me = std::process::id();
    let reply = std::panic::catch_unwind(|| build(&req)).unwrap_or_else(|p| {
        // libcontainer's forked children return from the fork on this stack: a panic in
        // one unwinds to here, in a process that must not answer for the helper.
        if std::process::id() != me {
            // SAFETY: _exit ends this process at once; nothing after it runs.
            unsafe { libc::_exit(255) }
        }
        let what = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Reply::Failed(
            Failure::Internal,
            format!("the build helper panicked: {what}"),
        )
    });
    match write_reply(&req.reply, &reply) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(1),
    }
}

fn write_reply(path: &Path, reply: &Reply) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, reply.to_json().to_string())?;
    std::fs::rename(&tmp, path)
}

fn build(req: &Request) -> Reply {
    match try_build(req) {
        Ok(pid) => Reply::Built(pid),
        Err(e) => {
            let failure = match e {
                LibcontainerError::IncorrectStatus(_) => Failure::Precondition,
                LibcontainerError::InvalidInput(_) | LibcontainerError::InvalidID(_) => {
                    Failure::Invalid
                }
                _ => Failure::Internal,
            };
            Reply::Failed(failure, e.to_string())
        }
    }
}

fn try_build(req: &Request) -> Result<i32, LibcontainerError> {
    let mut b = ContainerBuilder::new(req.id.clone(), SyscallType::default())
        .with_root_path(&req.state_root)?
        .with_console_socket(req.console_socket.as_ref());
    let io = |what: &str, e: std::io::Error| LibcontainerError::Other(format!("{what}: {e}"));
    if req.piped_stdio {
        let dup = |fd: std::os::fd::BorrowedFd<'_>| {
            fd.try_clone_to_owned()
                .map_err(|e| io("duplicating stdio", e))
        };
        b = b
            .with_stdin(dup(std::io::stdin().as_fd())?)
            .with_stdout(dup(std::io::stdout().as_fd())?)
            .with_stderr(dup(std::io::stderr().as_fd())?);
    }
    // The process has its own copies. The helper's 0-2 go to /dev/null: what libcontainer
    // runs here (OCI hooks inherit stderr) must neither write into the container's output
    // nor hold its pipes open.
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| io("opening /dev/null", e))?;
    nix::unistd::dup2_stdin(&null)
        .and_then(|()| nix::unistd::dup2_stdout(&null))
        .and_then(|()| nix::unistd::dup2_stderr(&null))
        .map_err(|e| io("redirecting the helper's stdio", e.into()))?;
    b = b.with_pid_file(Some(req.pid_file()))?;
    match &req.kind {
        Kind::Init { bundle, no_pivot } => {
            let container = b
                .validate_id()?
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .with_no_pivot(*no_pivot)
                .build()?;
            container
                .pid()
                .map(|p| p.as_raw())
                .ok_or_else(|| LibcontainerError::Other("the container has no init pid".into()))
        }
        Kind::Tenant { process } => Ok(b
            .as_tenant()
            .with_detach(true)
            .with_process(Some(process))
            .build()?
            .as_raw()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_survive_their_encoding() {
        for kind in [
            Kind::Init {
                bundle: "/b".into(),
                no_pivot: true,
            },
            Kind::Tenant {
                process: "/b/exec-1.json".into(),
            },
        ] {
            for console_socket in [None, Some(PathBuf::from("/b/console.sock"))] {
                let r = Request {
                    id: "c1".into(),
                    state_root: "/s".into(),
                    console_socket,
                    piped_stdio: true,
                    kind: kind.clone(),
                    reply: "/s/r".into(),
                };
                assert_eq!(Request::from_json(&r.to_json().to_string()), Ok(r));
            }
        }
        for reply in [
            Reply::Built(42),
            Reply::Failed(Failure::Invalid, "bad id".into()),
            Reply::Failed(Failure::Precondition, "running".into()),
            Reply::Failed(Failure::Internal, "mount".into()),
        ] {
            assert_eq!(Reply::from_json(&reply.to_json().to_string()), Ok(reply));
        }
    }

    #[test]
    fn an_abandoned_build_leaves_no_process_state_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let req = Request {
            id: "c1".into(),
            state_root: dir.path().join("containers"),
            console_socket: None,
            piped_stdio: false,
            kind: Kind::Init {
                bundle: dir.path().join("bundle"),
                no_pivot: false,
            },
            reply: dir.path().join("build-0.reply"),
        };
        // What a helper that died half-way leaves: the process it made (its pid written),
        // a state directory libcontainer cannot load, a reply half written.
        let mut made = Command::new("sleep").arg("60").spawn().unwrap();
        std::fs::write(req.pid_file(), made.id().to_string()).unwrap();
        std::fs::create_dir_all(req.state_root.join("c1")).unwrap();
        std::fs::write(req.state_root.join("c1/state.json"), b"{").unwrap();
        std::fs::write(req.reply.with_extension("tmp"), b"{").unwrap();
        abandon(&req);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(made.wait().unwrap().signal(), Some(9));
        assert!(!req.state_root.join("c1").exists());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, ["containers"], "files left: {left:?}");
    }

    #[test]
    fn malformed_requests_and_replies_are_refused() {
        for bad in [
            "",
            "{}",
            r#"{"id":"c","state_root":"/s","piped_stdio":true,"reply":"/r","kind":{}}"#,
            r#"{"id":"c","state_root":"/s","piped_stdio":true,"reply":"/r","kind":{"init":{"bundle":"/b"}}}"#,
        ] {
            assert!(Request::from_json(bad).is_err(), "{bad}");
        }
        for bad in [
            "",
            "{}",
            r#"{"pid":4294967296}"#,
            r#"{"failure":"odd","message":"m"}"#,
        ] {
            assert!(Reply::from_json(bad).is_err(), "{bad}");
        }
    }
}
