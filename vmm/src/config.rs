//! The command line, parsed at the edge into plain [`VmResources`].
//!
//! Everything a user (or the shim) can get wrong is checked here, before a KVM file
//! descriptor exists: files that are missing, vCPU and memory counts out of range, a
//! command line the guest could not take. Nothing here touches KVM or guest memory.

use std::path::{Path, PathBuf};

use clap::Parser;
use thiserror::Error;

use crate::arch;

/// Smallest guest memory hull-vmm accepts: below this the guest kernel cannot unpack an
/// initramfs.
pub const MIN_MEMORY_MIB: u32 = 32;
/// Largest guest memory hull-vmm accepts (a sanity bound, not a design limit).
pub const MAX_MEMORY_MIB: u32 = 1 << 20;

/// `hull-vmm`'s command line.
#[derive(Debug, Clone, Parser, PartialEq, Eq)]
#[command(
    name = "hull-vmm",
    version,
    about = "hull's KVM microVM monitor: boots a Linux guest (PVH vmlinux) with an initramfs"
)]
pub struct Cli {
    /// Guest kernel: an uncompressed `vmlinux` ELF with a PVH entry point.
    #[arg(long)]
    pub kernel: PathBuf,
    /// Initramfs (cpio, optionally compressed).
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Guest kernel command line.
    #[arg(long, default_value = "console=ttyS0 reboot=t panic=-1 quiet")]
    pub cmdline: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Guest memory in MiB.
    #[arg(long = "memory-mib", default_value_t = 256)]
    pub memory_mib: u32,
    /// File that receives the guest's serial console (created or truncated); stdout if
    /// not given.
    #[arg(long)]
    pub console: Option<PathBuf>,
    /// Host side of the guest's vsock device (hybrid vsock): clients connect here and
    /// write `CONNECT <port>`; guest connections to host port P go to `PATH_P`. No vsock
    /// device without it.
    #[arg(long = "vsock-uds")]
    pub vsock_uds: Option<PathBuf>,
    /// A virtio-fs share: `TAG=SOCKET`, the guest mounts `TAG`, served by the vhost-user
    /// backend (virtiofsd) listening on `SOCKET`, which the caller started. Repeatable.
    #[arg(long = "fs", value_name = "TAG=SOCKET")]
    pub fs: Vec<String>,
}

/// One virtio-fs share: the tag the guest mounts and the backend's vhost-user socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsShare {
    /// The mount tag, 1..=36 bytes.
    pub tag: String,
    /// The vhost-user socket of its backend.
    pub socket: PathBuf,
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleOutput {
    /// hull-vmm's standard output.
    Stdout,
    /// A file, created or truncated at start.
    File(PathBuf),
}

/// Everything needed to build one VM, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmResources {
    /// Guest kernel (PVH ELF).
    pub kernel: PathBuf,
    /// Initramfs, if any.
    pub initrd: Option<PathBuf>,
    /// Guest kernel command line.
    pub cmdline: String,
    /// Number of vCPUs, `1..=arch::MAX_VCPUS`.
    pub vcpus: u8,
    /// Guest memory in bytes.
    pub memory_bytes: u64,
    /// The serial console's destination.
    pub console: ConsoleOutput,
    /// The vsock device's host unix socket, if the VM has one.
    pub vsock_uds: Option<PathBuf>,
    /// virtio-fs shares, one device each.
    pub fs: Vec<FsShare>,
}

/// Errors of validating the command line.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A file the VM needs does not exist or is not a regular file.
    #[error("{what} {path} is not a readable file")]
    MissingFile {
        /// Which input (kernel, initrd).
        what: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// The vCPU count is out of range.
    #[error("--vcpus {0} is out of range (1..={max})", max = arch::MAX_VCPUS)]
    VcpuCount(u32),
    /// The memory size is out of range.
    #[error("--memory-mib {0} is out of range ({MIN_MEMORY_MIB}..={MAX_MEMORY_MIB})")]
    MemorySize(u32),
    /// The kernel command line is too long for the guest or contains a NUL byte.
    #[error("--cmdline is invalid: {0}")]
    Cmdline(String),
    /// The vsock socket path is empty or its directory does not exist.
    #[error("--vsock-uds {0}: its directory does not exist")]
    VsockPath(PathBuf),
    /// A `--fs` value is not `TAG=SOCKET` with a valid tag, an unused tag and an existing
    /// socket.
    #[error("--fs {value:?}: {reason}")]
    FsShare {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Parses one `--fs TAG=SOCKET`; `taken` are the tags of the shares before it.
fn parse_fs(value: &str, taken: &[FsShare]) -> Result<FsShare, ConfigError> {
    let err = |reason| ConfigError::FsShare {
        value: value.to_string(),
        reason,
    };
    let (tag, socket) = value.split_once('=').ok_or(err("expected TAG=SOCKET"))?;
    if tag.is_empty() || tag.len() > crate::devices::virtio::fs::TAG_MAX_LEN || tag.contains('\0') {
        return Err(err("the tag must be 1 to 36 bytes without NUL"));
    }
    if taken.iter().any(|s| s.tag == tag) {
        return Err(err("the tag is used twice"));
    }
    let socket = PathBuf::from(socket);
    if !socket.exists() {
        return Err(err(
            "the backend socket does not exist (start virtiofsd first)",
        ));
    }
    Ok(FsShare {
        tag: tag.to_string(),
        socket,
    })
}

fn check_file(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(ConfigError::MissingFile {
            what,
            path: path.to_path_buf(),
        })
    }
}

impl TryFrom<Cli> for VmResources {
    type Error = ConfigError;

    fn try_from(cli: Cli) -> Result<Self, ConfigError> {
        check_file("kernel", &cli.kernel)?;
        if let Some(initrd) = &cli.initrd {
            check_file("initrd", initrd)?;
        }
        let vcpus = u8::try_from(cli.vcpus)
            .ok()
            .filter(|n| (1..=arch::MAX_VCPUS).contains(n))
            .ok_or(ConfigError::VcpuCount(cli.vcpus))?;
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&cli.memory_mib) {
            return Err(ConfigError::MemorySize(cli.memory_mib));
        }
        // The guest copies the command line into a fixed buffer; the terminating NUL
        // counts.
        if cli.cmdline.len() >= arch::CMDLINE_MAX_SIZE {
            return Err(ConfigError::Cmdline(format!(
                "{} bytes, the guest takes at most {}",
                cli.cmdline.len(),
                arch::CMDLINE_MAX_SIZE - 1
            )));
        }
        if cli.cmdline.contains('\0') {
            return Err(ConfigError::Cmdline("contains a NUL byte".into()));
        }
        if let Some(p) = &cli.vsock_uds {
            let dir = match p.parent() {
                Some(d) if d.as_os_str().is_empty() => Path::new("."),
                Some(d) => d,
                None => return Err(ConfigError::VsockPath(p.clone())),
            };
            if p.file_name().is_none() || !dir.is_dir() {
                return Err(ConfigError::VsockPath(p.clone()));
            }
        }
        let mut fs = Vec::with_capacity(cli.fs.len());
        for value in &cli.fs {
            let share = parse_fs(value, &fs)?;
            fs.push(share);
        }
        Ok(VmResources {
            fs,
            kernel: cli.kernel,
            initrd: cli.initrd,
            cmdline: cli.cmdline,
            vcpus,
            memory_bytes: u64::from(cli.memory_mib) << 20,
            console: cli
                .console
                .map_or(ConsoleOutput::Stdout, ConsoleOutput::File),
            vsock_uds: cli.vsock_uds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("vmlinux");
        let i = dir.path().join("initrd");
        std::fs::write(&k, b"k").unwrap();
        std::fs::write(&i, b"i").unwrap();
        (dir, k, i)
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("hull-vmm").chain(args.iter().copied()))
    }

    #[test]
    fn full_command_line_becomes_resources() {
        let (_d, k, i) = files();
        let cli = parse(&[
            "--kernel",
            k.to_str().unwrap(),
            "--initrd",
            i.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0",
            "--vcpus",
            "2",
            "--memory-mib",
            "128",
            "--console",
            "/tmp/c.log",
            "--vsock-uds",
            "/tmp/v.sock",
        ])
        .unwrap();
        let r = VmResources::try_from(cli).unwrap();
        assert_eq!(r.kernel, k);
        assert_eq!(r.initrd, Some(i));
        assert_eq!(r.cmdline, "console=ttyS0");
        assert_eq!(r.vcpus, 2);
        assert_eq!(r.memory_bytes, 128 << 20);
        assert_eq!(r.console, ConsoleOutput::File("/tmp/c.log".into()));
        assert_eq!(r.vsock_uds, Some("/tmp/v.sock".into()));
    }

    #[test]
    fn vsock_socket_needs_an_existing_directory() {
        let (_d, k, _i) = files();
        let k = k.to_str().unwrap();
        for bad in ["/nonexistent/dir/v.sock", "/"] {
            let err = VmResources::try_from(parse(&["--kernel", k, "--vsock-uds", bad]).unwrap())
                .unwrap_err();
            assert_eq!(err, ConfigError::VsockPath(bad.into()));
        }
        let r = VmResources::try_from(parse(&["--kernel", k, "--vsock-uds", "v.sock"]).unwrap())
            .unwrap();
        assert_eq!(r.vsock_uds, Some("v.sock".into()));
    }

    #[test]
    fn defaults_are_one_vcpu_256_mib_stdout_and_a_quiet_console() {
        let (_d, k, _i) = files();
        let r = VmResources::try_from(parse(&["--kernel", k.to_str().unwrap()]).unwrap()).unwrap();
        assert_eq!(r.vcpus, 1);
        assert_eq!(r.memory_bytes, 256 << 20);
        assert_eq!(r.console, ConsoleOutput::Stdout);
        assert_eq!(r.initrd, None);
        assert!(r.cmdline.contains("reboot=t"));
        assert_eq!(r.vsock_uds, None);
        assert_eq!(r.fs, []);
    }

    #[test]
    fn fs_shares_are_tag_equals_an_existing_socket() {
        let (d, k, _i) = files();
        let k = k.to_str().unwrap();
        let sock = d.path().join("fs.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let ok = format!("hull-share={}", sock.display());
        let other = format!("data={}", sock.display());
        let r =
            VmResources::try_from(parse(&["--kernel", k, "--fs", &ok, "--fs", &other]).unwrap())
                .unwrap();
        assert_eq!(
            r.fs,
            [
                FsShare {
                    tag: "hull-share".into(),
                    socket: sock.clone()
                },
                FsShare {
                    tag: "data".into(),
                    socket: sock.clone()
                },
            ]
        );
        let long = format!("{}={}", "t".repeat(37), sock.display());
        let missing = format!("x={}", d.path().join("none").display());
        for (bad, why) in [
            ("no-equals-sign", "TAG=SOCKET"),
            (&format!("={}", sock.display()) as &str, "1 to 36 bytes"),
            (&long, "1 to 36 bytes"),
            (&missing, "does not exist"),
        ] {
            let e =
                VmResources::try_from(parse(&["--kernel", k, "--fs", bad]).unwrap()).unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
        let e = VmResources::try_from(parse(&["--kernel", k, "--fs", &ok, "--fs", &ok]).unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("used twice"), "{e}");
    }

    #[test]
    fn kernel_is_required_by_the_parser() {
        assert!(parse(&["--vcpus", "1"]).is_err());
    }

    #[test]
    fn missing_files_are_named() {
        let (_d, k, _i) = files();
        let err = VmResources::try_from(
            parse(&[
                "--kernel",
                k.to_str().unwrap(),
                "--initrd",
                "/nonexistent/x",
            ])
            .unwrap(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            ConfigError::MissingFile {
                what: "initrd",
                path: "/nonexistent/x".into()
            }
        );
        let err =
            VmResources::try_from(parse(&["--kernel", "/nonexistent/k"]).unwrap()).unwrap_err();
        assert!(err.to_string().contains("kernel /nonexistent/k"), "{err}");
    }

    #[test]
    fn counts_out_of_range_are_rejected() {
        let (_d, k, _i) = files();
        let k = k.to_str().unwrap();
        for (args, want) in [
            (vec!["--vcpus", "0"], ConfigError::VcpuCount(0)),
            (vec!["--vcpus", "300"], ConfigError::VcpuCount(300)),
            (vec!["--memory-mib", "8"], ConfigError::MemorySize(8)),
            (
                vec!["--memory-mib", "2000000"],
                ConfigError::MemorySize(2_000_000),
            ),
        ] {
            let mut a = vec!["--kernel", k];
            a.extend(args);
            assert_eq!(VmResources::try_from(parse(&a).unwrap()).unwrap_err(), want);
        }
        assert!(parse(&["--kernel", k, "--vcpus", "-1"]).is_err());
    }

    #[test]
    fn oversized_or_nul_command_lines_are_rejected() {
        let (_d, k, _i) = files();
        let long = "x".repeat(arch::CMDLINE_MAX_SIZE);
        let err = VmResources::try_from(
            parse(&["--kernel", k.to_str().unwrap(), "--cmdline", &long]).unwrap(),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::Cmdline(_)), "{err}");
        let err = VmResources::try_from(
            parse(&["--kernel", k.to_str().unwrap(), "--cmdline", "a\0b"]).unwrap(),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::Cmdline(_)), "{err}");
    }
}
