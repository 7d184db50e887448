//! `hull check`: what this host can run, and which backend hull would use, with reasons.
//!
//! Everything is probed for real: KVM by running ring-0 guest code ([`crate::kvm_probe`]),
//! tools by running them, the guest image by opening it. The backend choice is a pure
//! function of those findings ([`choose_backend`]) so it can be tested.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::backend::hullvmm::{HullVmm, DEFAULT_HULL_VMM};
use crate::backend::jail::JailRange;
use crate::backend::qemu::{Accel, Qemu, DEFAULT_QEMU, DEFAULT_VSOCK_DAEMON};
use crate::backend::{BackendKind, Hypervisor};
use crate::image::GuestImage;
use crate::kvm_probe::{self, KvmProbe, KvmVerdict};

/// A host tool hull runs.
#[derive(Debug, Clone, Serialize)]
pub struct Tool {
    /// The name looked up.
    pub name: String,
    /// Where it was found.
    pub path: Option<PathBuf>,
    /// First line of `--version`, or why it could not be run.
    pub detail: String,
}

impl Tool {
    /// Whether the tool was found and answered `--version`.
    pub fn ok(&self) -> bool {
        self.path.is_some()
    }
}

/// A file of the guest image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageFile {
    /// The path checked.
    pub path: PathBuf,
    /// Its size, if it is a readable regular file.
    pub size: Option<u64>,
    /// Why it is not usable, if it is not.
    pub problem: Option<String>,
}

/// Which backend hull asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendRequest {
    /// The best this host supports.
    Auto,
    /// QEMU, with the accelerator forced or probed.
    Qemu(Option<Accel>),
    /// hull's own VMM (needs native KVM).
    HullVmm,
}

/// Picks the backend kind for `request` given the KVM verdict (the rule; whether the
/// binaries are installed is [`choose_backend`]'s business). `Auto` takes hull-vmm only
/// where KVM runs guest kernel code natively, QEMU (KVM or TCG) everywhere else. hull-vmm
/// asked for by name where KVM is not native is refused with the reason: no Linux guest
/// would boot (hull-vmm has no software emulation).
pub fn resolve_backend(request: BackendRequest, kvm: KvmVerdict) -> Result<BackendKind, String> {
    match (request, kvm) {
        (BackendRequest::Qemu(_), _) => Ok(BackendKind::Qemu),
        (BackendRequest::HullVmm | BackendRequest::Auto, KvmVerdict::Native) => {
            Ok(BackendKind::HullVmm)
        }
        (BackendRequest::Auto, _) => Ok(BackendKind::Qemu),
        (BackendRequest::HullVmm, v) => Err(format!(
            "backend hull-vmm was asked for, but KVM is {v:?} on this host (hull-vmm needs \
             KVM that runs guest kernel code natively; use qemu)"
        )),
    }
}

/// The backend hull would use, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendChoice {
    /// `qemu` or `hull-vmm`.
    pub backend: &'static str,
    /// The accelerator.
    pub accel: Accel,
    /// Why.
    pub reason: String,
}

/// Everything `hull check` found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The KVM probe.
    pub kvm: KvmProbe,
    /// QEMU.
    pub qemu: Tool,
    /// The vhost-user vsock daemon.
    pub vsock_daemon: Tool,
    /// hull's own VMM.
    pub hull_vmm: Tool,
    /// The guest kernel.
    pub kernel: ImageFile,
    /// The guest initramfs.
    pub initrd: ImageFile,
    /// The backend hull would use, or why there is none.
    pub backend: Result<BackendChoice, String>,
}

impl CheckReport {
    /// Whether hull can boot guests on this host.
    pub fn ready(&self) -> bool {
        self.backend.is_ok() && self.kernel.problem.is_none() && self.initrd.problem.is_none()
    }
}

/// Picks the backend for `request` from what the host has.
pub fn choose_backend(
    request: BackendRequest,
    kvm: KvmVerdict,
    qemu_ok: bool,
    vsock_daemon_ok: bool,
    hull_vmm_ok: bool,
) -> Result<BackendChoice, String> {
    if resolve_backend(request, kvm)? == BackendKind::HullVmm {
        if hull_vmm_ok {
            return Ok(BackendChoice {
                backend: "hull-vmm",
                accel: Accel::Kvm,
                reason: "KVM runs guest kernel code natively".to_string(),
            });
        }
        if request == BackendRequest::HullVmm {
            return Err(format!("{DEFAULT_HULL_VMM} not found (make install)"));
        }
        // auto without hull-vmm installed: QEMU on KVM below.
    }
    if !qemu_ok {
        return Err(format!(
            "{DEFAULT_QEMU} not found (apt-get install qemu-system-x86)"
        ));
    }
    if !vsock_daemon_ok {
        return Err(format!(
            "{DEFAULT_VSOCK_DAEMON} not found (cargo install vhost-device-vsock)"
        ));
    }
    let (accel, reason) = match (request, kvm) {
        // Decided above (chosen or refused); never QEMU in its place.
        (BackendRequest::HullVmm, _) => {
            return Err("backend hull-vmm was asked for but cannot be used here".into());
        }
        (BackendRequest::Qemu(Some(Accel::Kvm)), v) if v != KvmVerdict::Native => {
            return Err(format!(
                "accelerator kvm was asked for, but KVM is {v:?} on this host"
            ));
        }
        (BackendRequest::Qemu(Some(a)), _) => (a, format!("accelerator {a} was asked for")),
        (_, KvmVerdict::Native) => (
            Accel::Kvm,
            "KVM runs guest kernel code natively".to_string(),
        ),
        (_, v) => (
            Accel::Tcg,
            format!("KVM is {v:?} here (cannot run a guest kernel at useful speed); using TCG"),
        ),
    };
    Ok(BackendChoice {
        backend: "qemu",
        accel,
        reason,
    })
}

/// The QEMU backend with a choice's accelerator (for callers that need QEMU itself).
pub fn hypervisor(choice: &BackendChoice) -> Qemu {
    Qemu::new(choice.accel)
}

/// Makes the backend a choice names; its processes run confined to `jail` ids if given.
pub fn backend(choice: &BackendChoice, jail: Option<JailRange>) -> Box<dyn Hypervisor> {
    match choice.backend {
        "hull-vmm" => Box::new(HullVmm {
            jail,
            ..HullVmm::default()
        }),
        _ => Box::new(Qemu {
            jail,
            ..hypervisor(choice)
        }),
    }
}

/// Whether the pods' own ids can run what the chosen backend starts as them: with QEMU,
/// `vhost-device-vsock` runs as the pod's id, so it must be installed where that id can
/// execute it (not in root's home). Probed for real: `--version` as a free id of `range`.
/// `Ok` says what confinement pods get; `Err` why pods would fail to start.
pub async fn confinement(
    range: Option<JailRange>,
    backend: &Result<BackendChoice, String>,
) -> Result<String, String> {
    let Some(range) = range else {
        return Ok("off (jail_ids = \"\"): the pods' hypervisor processes run as root".into());
    };
    let ids = format!("uids {}-{}", range.first, range.last());
    match backend {
        Ok(c) if c.backend == "qemu" => {}
        Ok(c) => return Ok(format!("{} as one of {ids}, chrooted", c.backend)),
        Err(_) => return Ok(format!("{ids} (no backend to check)")),
    }
    let style = crate::backend::qemu_caps::privdrop(
        Path::new(DEFAULT_QEMU),
        Path::new(crate::backend::qemu_caps::CACHE_PATH),
    )
    .await?;
    if style == crate::backend::qemu_caps::PrivDrop::Unsupported {
        return Err(format!(
            "{DEFAULT_QEMU} has neither -run-with user= nor -runas with -chroot, so it cannot \
             drop to a pod's id; set jail_ids = \"\""
        ));
    }
    let id = crate::backend::jail::JailId::allocate(
        range,
        Path::new(crate::backend::jail::DEFAULT_LOCK_DIR),
        "hull-check",
    )
    .map_err(|e| e.to_string())?;
    let uid = id.id();
    let run = tokio::process::Command::new(DEFAULT_VSOCK_DAEMON)
        .arg("--version")
        .uid(uid)
        .gid(uid)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(5), run).await {
        Ok(Ok(out)) if out.status.success() => Ok(format!(
            "qemu (chrooted, {style:?}) and {DEFAULT_VSOCK_DAEMON} as one of {ids}"
        )),
        Ok(Ok(out)) => Err(format!(
            "{DEFAULT_VSOCK_DAEMON} --version as uid {uid} exited with {}",
            out.status
        )),
        Ok(Err(e)) => Err(format!(
            "{DEFAULT_VSOCK_DAEMON} cannot be run as uid {uid} ({e}): install it where every \
             user can run it (e.g. /usr/local/bin), or set jail_ids = \"\""
        )),
        Err(_) => Err(format!(
            "{DEFAULT_VSOCK_DAEMON} --version as uid {uid} did not answer within 5 s"
        )),
    }
}

/// Finds `name` in PATH (or takes it as a path if it has a `/`).
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Path::new(name).is_file().then(|| PathBuf::from(name));
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

async fn tool(name: &str) -> Tool {
    let Some(path) = which(name) else {
        return Tool {
            name: name.into(),
            path: None,
            detail: "not found in PATH".into(),
        };
    };
    let run = tokio::process::Command::new(&path)
        .arg("--version")
        .kill_on_drop(true)
        .output();
    let detail = match tokio::time::timeout(Duration::from_secs(5), run).await {
        Ok(Ok(out)) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string(),
        Ok(Err(e)) => format!("cannot run: {e}"),
        Err(_) => "--version did not answer within 5 s".into(),
    };
    Tool {
        name: name.into(),
        path: Some(path),
        detail,
    }
}

fn image_file(path: &Path) -> ImageFile {
    let problem = match std::fs::File::open(path).and_then(|f| f.metadata()) {
        Ok(m) if m.is_file() && m.len() > 0 => {
            return ImageFile {
                path: path.into(),
                size: Some(m.len()),
                problem: None,
            }
        }
        Ok(_) => "not a non-empty regular file".to_string(),
        Err(e) => e.to_string(),
    };
    ImageFile {
        path: path.into(),
        size: None,
        problem: Some(problem),
    }
}

/// Runs every check, the KVM probe afresh (and records its verdict for [`run_cached`]).
pub async fn run(request: BackendRequest, image: &GuestImage) -> CheckReport {
    let kvm = probe_off_thread(|| {
        let p = kvm_probe::probe();
        kvm_probe::store(Path::new(kvm_probe::CACHE_PATH), &p);
        p
    })
    .await;
    let qemu = tool(DEFAULT_QEMU).await;
    let vsock_daemon = tool(DEFAULT_VSOCK_DAEMON).await;
    let hull_vmm = tool(DEFAULT_HULL_VMM).await;
    report(request, image, kvm, qemu, vsock_daemon, hull_vmm)
}

/// What a shim needs before booting a pod, fast: the KVM verdict recorded earlier on this
/// boot of the host (probing only if there is none) and the tools looked up in PATH
/// without running them.
pub async fn run_cached(request: BackendRequest, image: &GuestImage) -> CheckReport {
    let kvm = probe_off_thread(|| kvm_probe::probe_cached(Path::new(kvm_probe::CACHE_PATH))).await;
    let found = |name: &str| Tool {
        name: name.into(),
        path: which(name),
        detail: String::new(),
    };
    let (qemu, vsock_daemon) = (found(DEFAULT_QEMU), found(DEFAULT_VSOCK_DAEMON));
    let hull_vmm = found(DEFAULT_HULL_VMM);
    report(request, image, kvm, qemu, vsock_daemon, hull_vmm)
}

async fn probe_off_thread(f: impl FnOnce() -> KvmProbe + Send + 'static) -> KvmProbe {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| KvmProbe {
            verdict: KvmVerdict::Unavailable,
            reasons: vec![format!("the probe thread failed: {e}")],
            ns_per_instruction: None,
            modules: vec![],
        })
}

fn report(
    request: BackendRequest,
    image: &GuestImage,
    kvm: KvmProbe,
    qemu: Tool,
    vsock_daemon: Tool,
    hull_vmm: Tool,
) -> CheckReport {
    let backend = choose_backend(
        request,
        kvm.verdict,
        qemu.ok(),
        vsock_daemon.ok(),
        hull_vmm.ok(),
    );
    CheckReport {
        kvm,
        qemu,
        vsock_daemon,
        hull_vmm,
        kernel: image_file(&image.kernel),
        initrd: image_file(&image.initrd),
        backend,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_backend_takes_hull_vmm_only_on_native_kvm_and_refuses_it_elsewhere() {
        use KvmVerdict::*;
        assert_eq!(
            resolve_backend(BackendRequest::Auto, Native),
            Ok(BackendKind::HullVmm)
        );
        assert_eq!(
            resolve_backend(BackendRequest::HullVmm, Native),
            Ok(BackendKind::HullVmm)
        );
        for v in [Emulated, Unavailable] {
            assert_eq!(
                resolve_backend(BackendRequest::Auto, v),
                Ok(BackendKind::Qemu)
            );
            let e = resolve_backend(BackendRequest::HullVmm, v).unwrap_err();
            assert!(e.contains(&format!("{v:?}")), "{e}");
        }
        for v in [Native, Emulated, Unavailable] {
            for accel in [None, Some(Accel::Kvm), Some(Accel::Tcg)] {
                assert_eq!(
                    resolve_backend(BackendRequest::Qemu(accel), v),
                    Ok(BackendKind::Qemu)
                );
            }
        }
    }

    #[test]
    fn auto_uses_kvm_only_where_it_is_native() {
        let c =
            choose_backend(BackendRequest::Auto, KvmVerdict::Native, true, true, false).unwrap();
        assert_eq!((c.backend, c.accel), ("qemu", Accel::Kvm));
        for v in [KvmVerdict::Emulated, KvmVerdict::Unavailable] {
            let c = choose_backend(BackendRequest::Auto, v, true, true, false).unwrap();
            assert_eq!(c.accel, Accel::Tcg, "{v:?}");
            assert!(c.reason.contains(&format!("{v:?}")));
        }
    }

    #[test]
    fn a_forced_accelerator_is_honoured_or_refused_with_a_reason() {
        let c = choose_backend(
            BackendRequest::Qemu(Some(Accel::Tcg)),
            KvmVerdict::Native,
            true,
            true,
            false,
        )
        .unwrap();
        assert_eq!(c.accel, Accel::Tcg);
        let e = choose_backend(
            BackendRequest::Qemu(Some(Accel::Kvm)),
            KvmVerdict::Emulated,
            true,
            true,
            false,
        )
        .unwrap_err();
        assert!(e.contains("kvm") && e.contains("Emulated"), "{e}");
    }

    #[test]
    fn auto_takes_hull_vmm_on_native_kvm_when_installed_and_qemu_tcg_here() {
        let c = choose_backend(BackendRequest::Auto, KvmVerdict::Native, true, true, true).unwrap();
        assert_eq!((c.backend, c.accel), ("hull-vmm", Accel::Kvm));
        // Not installed: QEMU on KVM.
        let c =
            choose_backend(BackendRequest::Auto, KvmVerdict::Native, true, true, false).unwrap();
        assert_eq!((c.backend, c.accel), ("qemu", Accel::Kvm));
        // This machine's kvm_pvm is Emulated: auto stays on QEMU with TCG even with
        // hull-vmm installed, and hull-vmm by name is refused with the reason.
        let c =
            choose_backend(BackendRequest::Auto, KvmVerdict::Emulated, true, true, true).unwrap();
        assert_eq!((c.backend, c.accel), ("qemu", Accel::Tcg));
        let e = choose_backend(
            BackendRequest::HullVmm,
            KvmVerdict::Emulated,
            true,
            true,
            true,
        )
        .unwrap_err();
        assert!(e.contains("hull-vmm") && e.contains("Emulated"), "{e}");
        let e = choose_backend(
            BackendRequest::HullVmm,
            KvmVerdict::Native,
            true,
            true,
            false,
        )
        .unwrap_err();
        assert!(e.contains("hull-vmm not found"), "{e}");
        // hull-vmm needs neither QEMU nor vhost-device-vsock.
        let c = choose_backend(
            BackendRequest::HullVmm,
            KvmVerdict::Native,
            false,
            false,
            true,
        )
        .unwrap();
        assert_eq!(c.backend, "hull-vmm");
    }

    #[test]
    fn missing_tools_are_named() {
        let e = choose_backend(BackendRequest::Auto, KvmVerdict::Native, false, true, false)
            .unwrap_err();
        assert!(e.contains("qemu-system-x86_64"));
        let e = choose_backend(BackendRequest::Auto, KvmVerdict::Native, true, false, false)
            .unwrap_err();
        assert!(e.contains("vhost-device-vsock"));
    }

    #[test]
    fn image_files_report_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        assert!(image_file(&dir.path().join("none"))
            .problem
            .unwrap()
            .contains("No such file"));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(image_file(&empty).problem.is_some());
        std::fs::write(&empty, b"x").unwrap();
        assert_eq!(image_file(&empty).size, Some(1));
    }

    #[test]
    fn which_finds_programs_in_path_and_explicit_paths() {
        assert!(which("sh").is_some());
        assert!(which("/bin/sh").is_some());
        assert!(which("hull-no-such-program").is_none());
    }
}
