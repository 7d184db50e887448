//! Shared infrastructure for hull's integration tests: where the guest image is, which
//! backend this host uses, and counting what a test left behind.
//!
//! Tests here boot the real guest kernel and agent. Where the image is missing they fail
//! with a message saying how to build it (`make test` does); they never skip silently.

use std::path::{Path, PathBuf};

use hull_shim::backend::qemu::Qemu;
use hull_shim::check::{self, BackendRequest};
use hull_shim::image::GuestImage;
use hull_shim::vm::VmConfig;

/// The guest image under test (`HULL_KERNEL`/`HULL_INITRD`, set by `make test`). Panics
/// with instructions if it is missing.
pub fn guest_image() -> GuestImage {
    let image = GuestImage::from_env();
    for p in [&image.kernel, &image.initrd] {
        assert!(
            p.is_file(),
            "guest image file {} is missing: run these tests through `make test`, which builds \
             the image and sets HULL_KERNEL/HULL_INITRD",
            p.display()
        );
    }
    image
}

/// The kernel release the guest image was built as (the `release` file beside `vmlinux`).
pub fn image_kernel_release(image: &GuestImage) -> String {
    let p = image.kernel.with_file_name("release");
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
        .trim()
        .to_string()
}

/// The QEMU backend as `hull check` would choose it on this host.
pub async fn qemu_backend() -> Qemu {
    let report = check::run(BackendRequest::Auto, &guest_image()).await;
    let choice = report
        .backend
        .unwrap_or_else(|e| panic!("no usable backend on this host: {e}"));
    check::hypervisor(&choice)
}

/// A VM configuration for the test image with its state under `state_root`.
pub fn vm_config(state_root: &Path) -> VmConfig {
    let image = guest_image();
    let mut c = VmConfig::new(image.kernel, image.initrd);
    c.state_root = state_root.to_path_buf();
    c
}

/// Debian's busybox-static: the only binary of test container rootfs.
pub const BUSYBOX: &str = "/bin/busybox";

/// Builds a busybox root filesystem at `root` (bin/ with every applet, /etc/passwd, the
/// usual empty mount points).
pub fn busybox_rootfs(root: &Path) {
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} missing: apt-get install busybox-static"
    );
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    let list = std::process::Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// The directory holding `containerd-shim-hull-v2` (`HULL_SHIM_DIR`, else the workspace's
/// debug build). Panics with instructions if the binary is missing.
pub fn shim_dir() -> PathBuf {
    let dir = std::env::var_os("HULL_SHIM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug"));
    assert!(
        dir.join("containerd-shim-hull-v2").is_file(),
        "{}/containerd-shim-hull-v2 missing: `cargo build -p hull-shim` (make test does)",
        dir.display()
    );
    dir
}

/// A private containerd (scripts/containerd-private.sh) with the hull runtime in its PATH
/// and the test busybox image imported. Stopped and removed on drop.
#[derive(Debug)]
pub struct Containerd {
    /// Its directory (config, root, state, sockets, log).
    pub dir: tempfile::TempDir,
    /// The namespace tests use.
    pub namespace: &'static str,
    env: Vec<(String, String)>,
}

/// The image the tests run.
pub const TEST_IMAGE: &str = "docker.io/hull/busybox:latest";

impl Containerd {
    /// Starts one; `env` is added to containerd's (and so the shims') environment.
    pub fn start(env: &[(&str, &str)]) -> Containerd {
        assert!(nix_is_root(), "containerd tests need root");
        let dir = tempfile::Builder::new()
            .prefix("hull-ctrd-")
            .tempdir_in("/tmp")
            .unwrap();
        let script = workspace().join("scripts/containerd-private.sh");
        let st = std::process::Command::new(&script)
            .arg("start")
            .arg(dir.path())
            .arg(shim_dir())
            .envs(env.iter().copied())
            .status()
            .unwrap();
        assert!(st.success(), "starting the private containerd failed");
        let c = Containerd {
            dir,
            namespace: "hull-test",
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let image = c.dir.path().join("busybox.tar");
        let st =
            std::process::Command::new(workspace().join("tests/images/build-busybox-image.py"))
                .arg(&image)
                .arg(TEST_IMAGE)
                .status()
                .unwrap();
        assert!(st.success(), "building the busybox image failed");
        let out = c.ctr(&["images", "import", image.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }

    /// Restarts containerd alone, as an upgrade or a crash does: shims and their tasks live
    /// on and containerd must find them again.
    pub fn restart(&self) {
        let st = std::process::Command::new(workspace().join("scripts/containerd-private.sh"))
            .arg("restart")
            .arg(self.dir.path())
            .arg(shim_dir())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .status()
            .unwrap();
        assert!(st.success(), "restarting the private containerd failed");
    }

    /// The lines of containerd's log that mention `needle` (the last 40), for failure
    /// messages: a dead shim's cleanup shows there, with what `delete` printed.
    pub fn log_mentioning(&self, needle: &str) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Runs `ctr` against this containerd.
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        self.ctr_with_stdin(args, b"")
    }

    /// Runs `ctr` with `stdin` piped in.
    pub fn ctr_with_stdin(&self, args: &[&str], stdin: &[u8]) -> std::process::Output {
        self.ctr_within(0, args, stdin)
    }

    /// Runs `ctr`, killed after `seconds` (0 = no limit; a hang then shows as exit 124).
    pub fn ctr_within(&self, seconds: u32, args: &[&str], stdin: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = std::process::Command::new("timeout")
            .arg(seconds.to_string())
            .arg("ctr")
            .arg("-a")
            .arg(self.dir.path().join("containerd.sock"))
            .args(["-n", self.namespace])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin).unwrap();
        drop(input);
        child.wait_with_output().unwrap()
    }

    /// `ctr run --runtime io.containerd.hull.v2 --rm IMAGE ID ARGS...`.
    pub fn run(&self, id: &str, args: &[&str]) -> std::process::Output {
        let mut a = vec![
            "run",
            "--runtime",
            "io.containerd.hull.v2",
            "--rm",
            TEST_IMAGE,
            id,
        ];
        a.extend_from_slice(args);
        self.ctr(&a)
    }
}

impl Drop for Containerd {
    /// Also cleans up after a test that failed half-way: its tasks are killed and deleted
    /// through containerd, and shims that outlive containerd (as shims do) are killed and
    /// their pods' state cleaned, so one failure does not leave VMs that break later tests.
    fn drop(&mut self) {
        let ids: Vec<String> =
            String::from_utf8_lossy(&self.ctr(&["containers", "ls", "-q"]).stdout)
                .lines()
                .map(str::to_string)
                .collect();
        for id in &ids {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        }
        for id in &ids {
            for _ in 0..50 {
                if self.ctr(&["task", "rm", id]).status.success()
                    || !String::from_utf8_lossy(&self.ctr(&["task", "ls", "-q"]).stdout)
                        .lines()
                        .any(|l| l == id)
                {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = self.ctr(&["containers", "rm", id]);
        }
        let _ = std::process::Command::new(workspace().join("scripts/containerd-private.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
        let address = self.dir.path().join("containerd.sock");
        for pid in processes_mentioning(&format!("-address {}", address.display())) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
        for id in &ids {
            let dir = Path::new(hull_shim::DEFAULT_STATE_ROOT).join(id);
            if let Err(e) = hull_shim::reclaim::reclaim(&dir, hull_shim::reclaim::BUDGET) {
                eprintln!("{e}");
            }
        }
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Pids of live (non-zombie) processes whose command line (arguments joined by spaces)
/// mentions `needle`, or whose working directory does (a confined vsock daemon runs inside
/// the pod's vsock directory with relative paths).
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        // Arguments are NUL-separated; match against them joined by spaces.
        let cwd = std::fs::read_link(e.path().join("cwd")).unwrap_or_default();
        let cwd = cwd.to_string_lossy();
        let cwd = cwd.strip_suffix(" (deleted)").unwrap_or(&cwd);
        if String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .contains(needle)
            || format!("{cwd}/").contains(needle)
        {
            found.push(pid);
        }
    }
    found
}

/// Everything left under `root`: files, sockets, directories (recursive).
pub fn entries_under(root: &Path) -> Vec<PathBuf> {
    hull_shim::util::entries_under(root, usize::MAX)
}

/// Asserts that nothing of the VMs under `state_root` survives: no process mentions it, no
/// file is left below it.
pub fn assert_nothing_left(state_root: &Path) {
    let needle = state_root.to_str().expect("utf-8 temp path");
    let procs = processes_mentioning(needle);
    assert!(procs.is_empty(), "processes left behind: {procs:?}");
    let left = entries_under(state_root);
    assert!(left.is_empty(), "state left behind: {left:?}");
}
