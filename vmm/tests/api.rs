//! hull-vmm's control socket against the real binary on this machine's `/dev/kvm`, with a
//! tiny hand-built guest that runs forever and shows its progress on the console.
//!
//! The guest (32-bit code at the PVH entry) counts to 1000 in guest memory, writes `.` to the
//! UART, and loops. On this machine's kvm_pvm its ring-0 code is emulated, a few hundred dots
//! per second: enough to see progress stop and start. vCPU 1 never gets a startup IPI, so it
//! sits in KVM_RUN (wait-for-SIPI) all along: pause must get it out too. No KVM is mocked;
//! without /dev/kvm this test fails and says so.

#![cfg(target_arch = "x86_64")]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::LOAD_ADDR;

const ENTRY: u32 = 0x10_0010;

/// The guest: `mov dx,0x3f8; 1: mov ecx,1000; 2: inc dword [0x200000]; dec ecx; jnz 2b;
/// mov al,'.'; out dx,al; jmp 1b`.
const DOTS: [u8; 23] = [
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb9, 0xe8, 0x03, 0x00, 0x00, // mov ecx, 1000
    0xff, 0x05, 0x00, 0x00, 0x20, 0x00, // inc dword [0x200000]
    0x49, // dec ecx
    0x75, 0xf7, // jnz -9
    0xb0, 0x2e, // mov al, '.'
    0xee, // out dx, al
    0xeb, 0xed, // jmp -19
];

/// A PVH kernel whose one segment (a page of `hlt`, 0x100 bytes of it in the file) holds
/// `code` at [`ENTRY`].
fn tiny_kernel(code: &[u8]) -> Vec<u8> {
    let mut segment = vec![0xf4; 0x100];
    support::put(&mut segment, (u64::from(ENTRY) - LOAD_ADDR) as usize, code);
    support::elf(&segment, 0x200, 5, Some(ENTRY))
}

/// hull-vmm running the dots guest, killed if the test fails half-way.
struct Vmm {
    child: Child,
    console: PathBuf,
    sock: PathBuf,
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vmm {
    fn start(dir: &Path) -> Vmm {
        assert!(
            Path::new("/dev/kvm").exists(),
            "this test needs /dev/kvm (runs a guest; nothing is mocked)"
        );
        let kernel = dir.join("vmlinux");
        std::fs::write(&kernel, tiny_kernel(&DOTS)).unwrap();
        let (console, sock) = (dir.join("console"), dir.join("api.sock"));
        let child = Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
            .arg("--kernel")
            .arg(&kernel)
            .args(["--vcpus", "2", "--memory-mib", "64", "--console"])
            .arg(&console)
            .arg("--api-sock")
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting hull-vmm");
        let vmm = Vmm {
            child,
            console,
            sock,
        };
        let t = Instant::now();
        while !vmm.sock.exists() {
            assert!(t.elapsed() < Duration::from_secs(10), "no control socket");
            std::thread::sleep(Duration::from_millis(5));
        }
        vmm
    }

    fn dots(&self) -> u64 {
        std::fs::metadata(&self.console).map_or(0, |m| m.len())
    }

    /// Waits until the console grew past `than`.
    fn wait_progress(&self, than: u64) -> u64 {
        let t = Instant::now();
        loop {
            let n = self.dots();
            if n > than {
                return n;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the guest made no progress past {than} dots"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

struct Client(BufReader<UnixStream>);

impl Client {
    fn connect(sock: &Path) -> Client {
        let s = UnixStream::connect(sock).expect("connecting to the control socket");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client(BufReader::new(s))
    }

    /// Sends `line` (a `\n` is added) and returns the parsed reply.
    fn ask(&mut self, line: &str) -> serde_json::Value {
        self.0
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        let mut reply = String::new();
        self.0.read_line(&mut reply).expect("a reply");
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("reply {reply:?}: {e}"))
    }

    fn ok(&mut self, cmd: &str) -> serde_json::Value {
        let v = self.ask(&format!(r#"{{"cmd":"{cmd}"}}"#));
        assert_eq!(v["ok"], true, "{cmd}: {v}");
        v
    }
}

#[test]
fn pause_stops_the_guest_resume_restarts_it_and_shutdown_ends_hull_vmm() {
    let dir = tempfile::tempdir().unwrap();
    let mut vmm = Vmm::start(dir.path());
    let mut c = Client::connect(&vmm.sock);

    let v = c.ok("state");
    assert_eq!(
        (v["state"].as_str(), v["vcpus"].as_u64()),
        (Some("running"), Some(2))
    );
    let before = vmm.wait_progress(20);

    let m = c.ok("metrics")["metrics"].clone();
    assert!(m["vcpu_exits"]["io_out"].as_u64().unwrap() >= 20, "{m}");
    // The counter goes up just after each one-byte write to the file: it may lag by one.
    assert!(m["console_bytes"].as_u64().unwrap() + 1 >= before, "{m}");
    assert!(m["vsock"].is_null(), "no vsock device: {m}");
    let first = &m["first_kvm_run"];
    assert!(first["monotonic_ns"].as_u64().unwrap() > 0, "{m}");
    assert!(first["process_cpu_us"].as_u64().unwrap() > 0, "{m}");

    // Pause: every vCPU parks (vCPU 1 from its wait-for-SIPI inside KVM_RUN), no progress.
    c.ok("pause");
    assert_eq!(c.ok("state")["state"], "paused");
    let paused_at = vmm.dots();
    let exits = c.ok("metrics")["metrics"]["vcpu_exits"]["total"].clone();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(vmm.dots(), paused_at, "the guest ran while paused");
    let m = c.ok("metrics")["metrics"].clone();
    assert_eq!(
        m["vcpu_exits"]["total"], exits,
        "no exits while paused: {m}"
    );
    assert_eq!(m["console_bytes"].as_u64(), Some(paused_at));
    // vCPU 1 never leaves KVM_RUN by itself: it parked only because the kick got it out.
    // (vCPU 0 may have reached the gate on its own between two port writes.)
    assert!(
        m["vcpu_exits"]["interrupted"].as_u64().unwrap() >= 1,
        "a vCPU was kicked out of KVM_RUN: {m}"
    );
    // A second pause is a no-op that succeeds.
    c.ok("pause");

    // Resume: it moves again.
    c.ok("resume");
    assert_eq!(c.ok("state")["state"], "running");
    let resumed = vmm.wait_progress(paused_at + 20);

    // Pause and resume again from a second client, quickly, several times.
    let mut c2 = Client::connect(&vmm.sock);
    for _ in 0..5 {
        c2.ok("pause");
        c2.ok("resume");
    }
    vmm.wait_progress(resumed + 10);

    // The small CLI client (what the nested harness uses).
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_hull-vmm-ctl"))
            .arg(&vmm.sock)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = ctl(&["state"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with(r#"{"ok":true,"state":"running""#), "{out}");
    assert_eq!(ctl(&["fly"]).0, Some(2));

    // Malformed requests get errors naming the problem; the VM keeps running.
    for (req, want) in [
        (r#"{"cmd":"paws"}"#, "unknown variant `paws`"),
        (r#"{"cmd":"pause","now":true}"#, "unknown field `now`"),
        ("{}", "missing field `cmd`"),
        ("pause", "expected a JSON object"),
        ("", "empty request"),
    ] {
        let v = c.ask(req);
        assert_eq!(v["ok"], false, "{req:?}: {v}");
        assert!(v["error"].as_str().unwrap().contains(want), "{req:?}: {v}");
    }
    // An over-long request: one error reply, then the connection is closed (with a reset,
    // as the rest of the request is never read).
    let mut long = UnixStream::connect(&vmm.sock).unwrap();
    long.write_all(&vec![b'x'; 10_000]).unwrap();
    let mut rest = Vec::new();
    if let Err(e) = long.read_to_end(&mut rest) {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("longer than 4096 bytes"), "{rest}");
    assert_eq!(rest.lines().count(), 1, "{rest}");
    assert_eq!(c.ok("state")["state"], "running");

    // Shutdown: the reply, then hull-vmm ends with status 0, says why, removes the socket.
    c.ok("shutdown");
    let status = support::wait_exit(
        &mut vmm.child,
        Duration::from_secs(10),
        "hull-vmm did not exit",
    );
    let stderr = support::stderr_of(&mut vmm.child);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("stopped by the control socket"), "{stderr}");
    assert!(!vmm.sock.exists(), "the control socket is removed at exit");
    let mut reply = String::new();
    assert_eq!(c.0.read_line(&mut reply).unwrap(), 0, "EOF after shutdown");
}

#[test]
fn a_file_in_the_way_of_the_control_socket_is_an_error_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, tiny_kernel(&DOTS)).unwrap();
    let sock = dir.path().join("api.sock");
    std::fs::write(&sock, b"not a socket").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
        .arg("--kernel")
        .arg(&kernel)
        .arg("--console")
        .arg(dir.path().join("console"))
        .arg("--api-sock")
        .arg(&sock)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("binding the control socket"), "{stderr}");
    assert_eq!(std::fs::read(&sock).unwrap(), b"not a socket");
}

#[test]
fn sigterm_stops_hull_vmm_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut vmm = Vmm::start(dir.path());
    let mut c = Client::connect(&vmm.sock);
    assert_eq!(c.ok("state")["state"], "running");
    vmm.wait_progress(5);
    let pid = vmm.child.id() as libc::pid_t;
    // SAFETY: kill() on our own child's pid (not yet reaped) with a valid signal.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = support::wait_exit(
        &mut vmm.child,
        Duration::from_secs(10),
        "hull-vmm ignored SIGTERM",
    );
    let stderr = support::stderr_of(&mut vmm.child);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
    assert!(!vmm.sock.exists(), "the control socket is removed");
}
