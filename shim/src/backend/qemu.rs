//! The QEMU backend: Debian's `qemu-system-x86_64 -M microvm` with vsock from
//! `vhost-device-vsock` (rust-vmm, crates.io) over vhost-user.
//!
//! Guest memory is a shared memfd (vhost-user devices need to map it). The accelerator is
//! KVM where KVM runs guests natively and TCG elsewhere (see [`crate::kvm_probe`]). One
//! `vhost-device-vsock` runs per VM; it exposes the hybrid-vsock unix socket and does not
//! exit when QEMU does, so [`QemuVm::terminate`] stops it.
//!
//! Confinement ([`Qemu::jail`], the config's `jail_ids`): the two processes that parse what
//! the guest writes run as the pod's own uid/gid ([`super::jail`]). QEMU starts as root,
//! opens everything, then becomes the id in an empty directory before the guest runs
//! (`-runas`/`-chroot` or `-run-with`, whichever it has: [`super::qemu_caps`]); `vhost-device-vsock` is started as the id, with its sockets in the pod's
//! vsock directory (given to the id). virtiofsd stays root (it serves files of every owner;
//! it confines itself).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::process::{Child, Command};

use super::jail::{self, JailId, JailRange, DEFAULT_LOCK_DIR};
use super::qemu_caps::{self, PrivDrop};
use super::{BackendError, Hypervisor, LaunchSpec, VmProcesses};
use crate::util::tail_of_file;

/// How the guest's CPU is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// QEMU's software emulator.
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(format!(
                "unknown accelerator {other:?} (expected kvm or tcg)"
            )),
        }
    }
}

/// Default QEMU binary.
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";
/// Default vhost-user vsock daemon.
pub const DEFAULT_VSOCK_DAEMON: &str = "vhost-device-vsock";
/// Default virtio-fs daemon.
pub const DEFAULT_VIRTIOFSD: &str = "virtiofsd";
/// The virtio-fs tag of the pod share; the agent mounts it (`CreateSandbox.share_tag`).
pub const SHARE_TAG: &str = "hull-share";
/// The guest's vsock CID. Each VM has its own vsock device, so every guest can use the
/// same CID.
pub const GUEST_CID: u32 = 3;
/// How long the vsock daemon may take to create its vhost-user socket.
const HELPER_START_TIMEOUT: Duration = Duration::from_secs(10);

/// The QEMU backend's settings.
#[derive(Debug, Clone)]
pub struct Qemu {
    /// `qemu-system-x86_64` (a name is looked up in PATH).
    pub binary: PathBuf,
    /// `vhost-device-vsock` (a name is looked up in PATH).
    pub vsock_daemon: PathBuf,
    /// `virtiofsd` (a name is looked up in PATH), for VMs with a share.
    pub virtiofsd: PathBuf,
    /// The accelerator.
    pub accel: Accel,
    /// The ids pods' QEMU and vsock daemon run as, one each; `None`: the shim's own.
    pub jail: Option<JailRange>,
    /// Where the ids' locks live.
    pub jail_lock_dir: PathBuf,
}

impl Qemu {
    /// QEMU from PATH with the given accelerator, unconfined.
    pub fn new(accel: Accel) -> Self {
        Qemu {
            binary: DEFAULT_QEMU.into(),
            vsock_daemon: DEFAULT_VSOCK_DAEMON.into(),
            virtiofsd: DEFAULT_VIRTIOFSD.into(),
            accel,
            jail: None,
            jail_lock_dir: DEFAULT_LOCK_DIR.into(),
        }
    }
}

/// The vhost-user control socket between QEMU and vhost-device-vsock: in the vsock
/// directory, where a confined daemon can create it.
fn vhost_vsock_socket(spec: &LaunchSpec) -> PathBuf {
    spec.vsock_dir().join("vhost-vsock.sock")
}

/// The empty directory a confined QEMU is chrooted into.
fn qemu_root(spec: &LaunchSpec) -> PathBuf {
    spec.state_dir.join("qemu-root")
}

/// The vhost-user control socket between QEMU and virtiofsd.
pub(super) fn virtiofs_socket(spec: &LaunchSpec) -> PathBuf {
    spec.state_dir.join("virtiofs.sock")
}

/// QEMU's command line for `spec` (without the binary); with `jail`, QEMU becomes that
/// uid/gid in [`qemu_root`] once it has opened everything, before the guest runs, with the
/// options its version has ([`PrivDrop`]).
pub fn qemu_args(spec: &LaunchSpec, accel: Accel, jail: Option<(u32, PrivDrop)>) -> Vec<String> {
    let mem = format!("{}M", spec.memory_mib);
    let cpu = match accel {
        Accel::Kvm => "host",
        // ERMS makes `rep movsb` slow under TCG; the guest falls back to other copies.
        Accel::Tcg => "max,-erms",
    };
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    push(&["-name", &spec.id]);
    // microvm: no PCI, no firmware tables. acpi=off makes QEMU put the virtio-mmio devices
    // on the kernel command line (QEMU 7.2 does so only without ACPI).
    push(&[
        "-M",
        &format!("microvm,accel={accel},acpi=off,memory-backend=mem"),
    ]);
    push(&["-cpu", cpu, "-smp", &spec.vcpus.to_string(), "-m", &mem]);
    push(&[
        "-object",
        &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
    ]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    // No process spawning or obsolete syscalls from QEMU itself. Privilege changes: denied
    // when it stays root; a confined QEMU needs them for its own -runas, and once it runs as
    // the pod's id it holds no capability, so set*id cannot raise it again.
    let elevate = if jail.is_some() { "allow" } else { "deny" };
    push(&[
        "-sandbox",
        &format!("on,obsolete=deny,elevateprivileges={elevate},spawn=deny,resourcecontrol=deny"),
    ]);
    if let Some((id, style)) = jail {
        let drop = style.args(id, &qemu_root(spec));
        push(&drop.iter().map(String::as_str).collect::<Vec<_>>());
    }
    push(&[
        "-chardev",
        &format!("file,id=console,path={}", spec.console_log.display()),
    ]);
    push(&["-serial", "chardev:console"]);
    push(&["-kernel", &spec.kernel.display().to_string()]);
    push(&["-initrd", &spec.initrd.display().to_string()]);
    push(&["-append", &spec.cmdline]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=vsock,path={}",
            vhost_vsock_socket(spec).display()
        ),
    ]);
    push(&["-device", "vhost-user-vsock-device,chardev=vsock"]);
    if spec.share_dir.is_some() {
        push(&[
            "-chardev",
            &format!("socket,id=fs,path={}", virtiofs_socket(spec).display()),
        ]);
        push(&[
            "-device",
            &format!("vhost-user-fs-device,chardev=fs,tag={SHARE_TAG}"),
        ]);
    }
    a
}

/// virtiofsd's command line for a VM with a share.
pub fn virtiofsd_args(spec: &LaunchSpec, share: &Path) -> Vec<String> {
    vec![
        "--socket-path".into(),
        virtiofs_socket(spec).display().to_string(),
        "--shared-dir".into(),
        share.display().to_string(),
        // chroot rather than a mount namespace: container rootfs are mounted into the share
        // after the VM started, and must show up in the guest.
        "--sandbox".into(),
        "chroot".into(),
        "--cache".into(),
        "auto".into(),
        "--announce-submounts".into(),
    ]
}

/// vhost-device-vsock's command line for `spec`. The socket paths are relative to the vsock
/// directory, where the daemon is started: a daemon running as the pod's id needs no
/// permission on the directories above (the pod's state directory is root's alone).
pub fn vsock_daemon_args(spec: &LaunchSpec) -> Vec<String> {
    let name = |p: &Path| {
        p.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    };
    vec![
        "--guest-cid".into(),
        GUEST_CID.to_string(),
        "--socket".into(),
        name(&vhost_vsock_socket(spec)),
        "--uds-path".into(),
        name(&spec.vsock_uds),
    ]
}

/// How a helper is started: for which pod, where, and as which id (`None`: root, the
/// shim's own).
#[derive(Debug, Clone)]
pub(super) struct StartAs {
    /// The pod's state directory: the helper and whatever it starts carry it in their
    /// environment ([`crate::reclaim::POD_ENV`]), which is how a dead pod's processes are
    /// told from anyone else's that happens to work in the directory.
    pub(super) pod: PathBuf,
    /// Its working directory.
    pub(super) dir: Option<PathBuf>,
    /// Its uid and gid.
    pub(super) id: Option<u32>,
}

impl StartAs {
    /// A helper of `spec`'s pod, as root, in the shim's working directory.
    pub(super) fn of_pod(spec: &LaunchSpec) -> StartAs {
        StartAs {
            pod: spec.state_dir.clone(),
            dir: None,
            id: None,
        }
    }
}

fn spawn_logged(
    program: &Path,
    args: &[String],
    log: &Path,
    how: &StartAs,
) -> Result<Child, BackendError> {
    let out = std::fs::File::create(log).map_err(|source| BackendError::StateFile {
        path: log.to_path_buf(),
        source,
    })?;
    let err = out.try_clone().map_err(|source| BackendError::StateFile {
        path: log.to_path_buf(),
        source,
    })?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env(crate::reclaim::POD_ENV, &how.pod)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    match (how.id, &how.dir) {
        (None, Some(dir)) => {
            cmd.current_dir(dir);
        }
        (None, None) => {}
        (Some(id), dir) => {
            // Into the directory while still root (the id may not search the directories
            // above it), then the id for good. Built before the fork: the child may not
            // allocate.
            let dir = std::ffi::CString::new(
                dir.as_deref()
                    .unwrap_or(Path::new("/"))
                    .as_os_str()
                    .as_encoded_bytes(),
            )
            .map_err(|e| BackendError::SpawnAs {
                program: program.to_path_buf(),
                id,
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            })?;
            let shim = std::process::id();
            // SAFETY: the closure runs in the forked child before exec, where only
            // async-signal-safe calls are allowed: it makes only chdir, setgroups, setresgid,
            // setresuid, prctl and getppid, on a path and ids prepared before the fork, and
            // allocates nothing (an OS error is a plain code).
            unsafe {
                cmd.pre_exec(move || {
                    let ok = |rc: libc::c_int| match rc {
                        0 => Ok(()),
                        _ => Err(std::io::Error::last_os_error()),
                    };
                    ok(libc::chdir(dir.as_ptr()))?;
                    ok(libc::setgroups(0, std::ptr::null()))?;
                    ok(libc::setresgid(id, id, id))?;
                    ok(libc::setresuid(id, id, id))?;
                    // Dies with the shim (after the id change, which would clear it): an
                    // unchrooted process of a dead pod must not linger with its id.
                    ok(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
                    if libc::getppid() as u32 != shim {
                        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                    }
                    Ok(())
                });
            }
        }
    }
    cmd.spawn().map_err(|source| match how.id {
        Some(id) => BackendError::SpawnAs {
            program: program.to_path_buf(),
            id,
            source,
        },
        None => BackendError::Spawn {
            program: program.to_path_buf(),
            source,
        },
    })
}

#[async_trait]
impl Hypervisor for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<Box<dyn VmProcesses>, BackendError> {
        // Which options this QEMU drops privileges with, before taking an id for it.
        let style = match self.jail {
            None => None,
            Some(_) => {
                let cannot = |reason| BackendError::QemuCannotConfine {
                    program: self.binary.clone(),
                    reason,
                };
                match qemu_caps::privdrop(&self.binary, Path::new(qemu_caps::CACHE_PATH)).await {
                    Ok(PrivDrop::Unsupported) => {
                        return Err(cannot(
                            "its -help shows neither -run-with user= nor -runas with -chroot"
                                .into(),
                        ))
                    }
                    Ok(style) => Some(style),
                    Err(reason) => return Err(cannot(reason)),
                }
            }
        };
        let jail = match self.jail {
            Some(range) => {
                // The vsock daemon creates its sockets in the directory: it gets it.
                let id = jail::for_pod(range, &self.jail_lock_dir, spec, true)?;
                let root = qemu_root(spec);
                std::fs::create_dir(&root)
                    .map_err(|source| BackendError::StateFile { path: root, source })?;
                Some(id)
            }
            None => None,
        };
        let run_as = jail.as_ref().map(JailId::id);
        let qemu_jail = run_as.zip(style);
        // Helpers first: QEMU needs their vhost-user sockets to exist when it starts.
        let mut helpers = vec![
            Helper::start(
                &self.vsock_daemon,
                &vsock_daemon_args(spec),
                &spec.state_dir.join("vhost-device-vsock.log"),
                &vhost_vsock_socket(spec),
                &StartAs {
                    dir: Some(spec.vsock_dir()),
                    id: run_as,
                    ..StartAs::of_pod(spec)
                },
            )
            .await?,
        ];
        if let Some(share) = &spec.share_dir {
            match Helper::start(
                &self.virtiofsd,
                &virtiofsd_args(spec, share),
                &spec.state_dir.join("virtiofsd.log"),
                &virtiofs_socket(spec),
                &StartAs::of_pod(spec),
            )
            .await
            {
                Ok(h) => helpers.push(h),
                Err(e) => {
                    terminate_all(&mut helpers).await;
                    return Err(e);
                }
            }
        }
        let qemu = match Helper::spawn(
            &self.binary,
            &qemu_args(spec, self.accel, qemu_jail),
            &spec.state_dir.join("qemu.log"),
            &StartAs::of_pod(spec),
        ) {
            Ok(q) => q,
            Err(e) => {
                terminate_all(&mut helpers).await;
                return Err(e);
            }
        };
        log::debug!(
            "{}: qemu pid {:?} (uid {run_as:?}), helper pids {:?}",
            spec.id,
            qemu.child.id(),
            helpers.iter().map(|h| h.child.id()).collect::<Vec<_>>()
        );
        Ok(Box::new(QemuVm {
            qemu,
            qemu_status: None,
            helpers,
            _jail: jail,
        }))
    }
}

/// A host process of a VM, with its log (shared with the hull-vmm backend).
#[derive(Debug)]
pub(super) struct Helper {
    pub(super) program: PathBuf,
    pub(super) child: Child,
    pub(super) log: PathBuf,
}

impl Helper {
    /// Starts `program` as `how` says.
    pub(super) fn spawn(
        program: &Path,
        args: &[String],
        log: &Path,
        how: &StartAs,
    ) -> Result<Helper, BackendError> {
        let child = spawn_logged(program, args, log, how)?;
        Ok(Helper {
            program: program.to_path_buf(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// Starts a vhost-user daemon as `how` says and waits until it listens on `socket` (its
    /// file alone is not enough: connections are refused between bind and listen).
    pub(super) async fn start(
        program: &Path,
        args: &[String],
        log: &Path,
        socket: &Path,
        how: &StartAs,
    ) -> Result<Helper, BackendError> {
        let mut h = Helper::spawn(program, args, log, how)?;
        let start = Instant::now();
        while !h
            .child
            .id()
            .is_some_and(|pid| crate::util::holds_listening_socket(pid, socket))
        {
            let failed = match h.child.try_wait() {
                Ok(Some(status)) => Some(format!("exited with {status}")),
                Ok(None) if start.elapsed() > HELPER_START_TIMEOUT => Some(format!(
                    "not listening on {} after {HELPER_START_TIMEOUT:?}",
                    socket.display()
                )),
                Ok(None) => None,
                Err(e) => Some(format!("waiting for it: {e}")),
            };
            if let Some(reason) = failed {
                h.terminate().await;
                return Err(BackendError::HelperFailed {
                    program: program.to_path_buf(),
                    reason: format!("{reason}; log: {}", tail_of_file(log, 10)),
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(h)
    }

    pub(super) async fn terminate(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.start_kill();
        }
        let _ = self.child.wait().await;
    }

    pub(super) fn name(&self) -> String {
        self.program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

pub(super) async fn terminate_all(helpers: &mut [Helper]) {
    for h in helpers {
        h.terminate().await;
    }
}

/// The processes of one QEMU VM.
#[derive(Debug)]
pub struct QemuVm {
    qemu: Helper,
    qemu_status: Option<ExitStatus>,
    helpers: Vec<Helper>,
    // Last: the id is free only once the processes are gone.
    _jail: Option<JailId>,
}

#[async_trait]
impl VmProcesses for QemuVm {
    async fn wait(&mut self) -> Result<ExitStatus, BackendError> {
        if let Some(s) = self.qemu_status {
            return Ok(s);
        }
        let status = self
            .qemu
            .child
            .wait()
            .await
            .map_err(|source| BackendError::Wait {
                program: self.qemu.program.clone(),
                source,
            })?;
        self.qemu_status = Some(status);
        Ok(status)
    }

    async fn terminate(&mut self) {
        // QEMU first: vhost-user daemons notice the disconnect.
        self.qemu.terminate().await;
        terminate_all(&mut self.helpers).await;
    }

    fn pids(&self) -> Vec<u32> {
        std::iter::once(&self.qemu)
            .chain(&self.helpers)
            .filter_map(|h| h.child.id())
            .collect()
    }

    fn diagnostics(&self) -> String {
        std::iter::once((&self.qemu, 10))
            .chain(self.helpers.iter().map(|h| (h, 5)))
            .map(|(h, n)| format!("{}: {}", h.name(), tail_of_file(&h.log, n)))
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LaunchSpec {
        LaunchSpec {
            id: "t1".into(),
            state_dir: "/run/hull/t1".into(),
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initramfs.cpio".into(),
            cmdline: "console=ttyS0 quiet".into(),
            vcpus: 2,
            memory_mib: 256,
            vsock_uds: "/run/hull/t1/vsock/vsock.sock".into(),
            guest_listeners: vec!["/run/hull/t1/vsock/vsock.sock_1025".into()],
            console_log: "/run/hull/t1/console.log".into(),
            share_dir: None,
        }
    }

    fn value_of<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn qemu_uses_a_shared_memfd_of_the_guest_size() {
        let a = qemu_args(&spec(), Accel::Tcg, None);
        assert_eq!(value_of(&a, "-m"), ["256M"]);
        assert_eq!(
            value_of(&a, "-object"),
            ["memory-backend-memfd,id=mem,size=256M,share=on"]
        );
        assert_eq!(
            value_of(&a, "-M"),
            ["microvm,accel=tcg,acpi=off,memory-backend=mem"]
        );
        assert_eq!(value_of(&a, "-smp"), ["2"]);
    }

    #[test]
    fn accelerator_selects_the_cpu_model() {
        assert_eq!(
            value_of(&qemu_args(&spec(), Accel::Kvm, None), "-cpu"),
            ["host"]
        );
        assert_eq!(
            value_of(&qemu_args(&spec(), Accel::Tcg, None), "-cpu"),
            ["max,-erms"]
        );
        assert!(value_of(&qemu_args(&spec(), Accel::Kvm, None), "-M")[0].contains("accel=kvm"));
    }

    #[test]
    fn every_file_qemu_touches_is_in_the_state_dir_or_the_image() {
        let a = qemu_args(&spec(), Accel::Tcg, None);
        assert!(
            a.contains(&"-no-reboot".to_string()),
            "a guest reboot must end QEMU"
        );
        for chardev in value_of(&a, "-chardev") {
            assert!(chardev.contains("path=/run/hull/t1/"), "{chardev}");
        }
        assert!(value_of(&a, "-chardev")
            .contains(&"socket,id=vsock,path=/run/hull/t1/vsock/vhost-vsock.sock"));
        assert_eq!(value_of(&a, "-kernel"), ["/k/vmlinux"]);
        assert_eq!(value_of(&a, "-initrd"), ["/k/initramfs.cpio"]);
        assert_eq!(value_of(&a, "-append"), ["console=ttyS0 quiet"]);
    }

    #[test]
    fn a_share_adds_a_virtio_fs_device_served_by_virtiofsd() {
        assert!(!qemu_args(&spec(), Accel::Tcg, None)
            .iter()
            .any(|a| a.contains("vhost-user-fs")));
        let mut s = spec();
        s.share_dir = Some("/run/hull/t1/share".into());
        let a = qemu_args(&s, Accel::Tcg, None);
        assert!(value_of(&a, "-device").contains(&"vhost-user-fs-device,chardev=fs,tag=hull-share"));
        assert!(value_of(&a, "-chardev").contains(&"socket,id=fs,path=/run/hull/t1/virtiofs.sock"));
        let v = virtiofsd_args(&s, Path::new("/run/hull/t1/share"));
        assert_eq!(value_of(&v, "--shared-dir"), ["/run/hull/t1/share"]);
        assert_eq!(
            value_of(&v, "--socket-path"),
            ["/run/hull/t1/virtiofs.sock"]
        );
    }

    #[test]
    fn vsock_daemon_serves_the_hybrid_socket() {
        let a = vsock_daemon_args(&spec());
        // Relative to the vsock directory, the daemon's working directory: a daemon running
        // as the pod's id reaches them without searching the state directory.
        assert_eq!(value_of(&a, "--uds-path"), ["vsock.sock"]);
        assert_eq!(value_of(&a, "--socket"), ["vhost-vsock.sock"]);
        assert_eq!(spec().vsock_dir(), Path::new("/run/hull/t1/vsock"));
    }

    #[test]
    fn a_confined_qemu_becomes_the_pod_id_in_an_empty_root_and_may_change_ids_to_do_so() {
        let open = qemu_args(&spec(), Accel::Tcg, None);
        assert!(value_of(&open, "-runas").is_empty() && value_of(&open, "-chroot").is_empty());
        assert!(value_of(&open, "-sandbox")[0].contains("elevateprivileges=deny"));
        let a = qemu_args(&spec(), Accel::Tcg, Some((1_879_048_200, PrivDrop::RunAs)));
        assert_eq!(value_of(&a, "-runas"), ["1879048200:1879048200"]);
        assert_eq!(value_of(&a, "-chroot"), ["/run/hull/t1/qemu-root"]);
        let newer = qemu_args(&spec(), Accel::Tcg, Some((7, PrivDrop::RunWith)));
        assert_eq!(
            value_of(&newer, "-run-with"),
            ["chroot=/run/hull/t1/qemu-root,user=7:7"]
        );
        assert!(value_of(&newer, "-runas").is_empty());
        // QEMU 7.2's -runas is killed by its own sandbox with elevateprivileges=deny.
        let sandbox = value_of(&a, "-sandbox")[0];
        assert!(sandbox.contains("elevateprivileges=allow"), "{sandbox}");
        assert!(sandbox.contains("spawn=deny") && sandbox.contains("obsolete=deny"));
    }

    #[test]
    fn accel_names_round_trip() {
        for a in [Accel::Kvm, Accel::Tcg] {
            assert_eq!(a.to_string().parse::<Accel>().unwrap(), a);
        }
        assert!("hvf".parse::<Accel>().unwrap_err().contains("hvf"));
    }
}
