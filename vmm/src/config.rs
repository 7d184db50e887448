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
    /// Guest kernel: an ELF `vmlinux` with a PVH entry point, or a `bzImage`.
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
    /// A virtio-blk disk on a raw image file; `PATH,ro` makes it read-only. Repeatable:
    /// the guest sees them as /dev/vda, /dev/vdb, ... in order.
    #[arg(long = "block", value_name = "PATH[,ro]")]
    pub block: Vec<String>,
    /// A virtio-net device on the tap interface NAME (created if it does not exist; needs
    /// CAP_NET_ADMIN).
    #[arg(long, value_name = "NAME", conflicts_with = "tap_fd")]
    pub tap: Option<String>,
    /// A virtio-net device on an inherited, already open tap file descriptor (opened with
    /// IFF_TAP|IFF_NO_PI|IFF_VNET_HDR).
    #[arg(long = "tap-fd", value_name = "FD")]
    pub tap_fd: Option<i32>,
    /// The virtio-net device's MAC address (aa:bb:cc:dd:ee:ff); a fixed locally
    /// administered one if not given.
    #[arg(long, value_name = "MAC")]
    pub mac: Option<String>,
    /// Do not install the seccomp filters. For debugging only: by default every thread
    /// runs under its own syscall allowlist, and a syscall outside it kills hull-vmm
    /// (SIGSYS).
    #[arg(long = "no-seccomp")]
    pub no_seccomp: bool,
    /// Debugging: a syscall outside a thread's allowlist is reported on stderr (thread kind
    /// and syscall number), then hull-vmm exits with status 159, instead of the kernel
    /// killing it by SIGSYS without a word.
    #[arg(long = "seccomp-trap", conflicts_with = "no_seccomp")]
    pub seccomp_trap: bool,
    /// Run as this user id once the VM is built. hull-vmm (started as root) first opens
    /// everything named here (/dev/kvm, kernel, initrd, console, vsock socket, disks, tap),
    /// then drops its supplementary groups, group and user, checks it cannot regain root,
    /// and only then runs guest code. The vsock device's `<uds>_<port>` listeners must accept this user.
    /// Needs --gid.
    #[arg(long, requires = "gid")]
    pub uid: Option<u32>,
    /// Run as this group id once the VM is built (see --uid). Needs --uid.
    #[arg(long, requires = "uid")]
    pub gid: Option<u32>,
    /// Change the root directory to DIR once the VM is built, before changing user (so
    /// needs --uid). Inputs are opened before; --vsock-uds must lie inside DIR, and the
    /// device's `<uds>_<port>` connections then resolve inside it.
    #[arg(long, value_name = "DIR", requires = "uid")]
    pub chroot: Option<PathBuf>,
    /// Control socket (unix stream, one JSON request per line: pause, resume, shutdown,
    /// state, metrics); created at start, removed at exit. None without it.
    #[arg(long = "api-sock")]
    pub api_sock: Option<PathBuf>,
    /// A virtio-fs share: `TAG=SOCKET`, the guest mounts `TAG`, served by the vhost-user
    /// backend (virtiofsd) listening on `SOCKET`, which the caller started. Repeatable.
    #[arg(long = "fs", value_name = "TAG=SOCKET")]
    pub fs: Vec<String>,
}

/// One virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// The raw image.
    pub path: PathBuf,
    /// Whether the guest gets it read-only.
    pub read_only: bool,
}

/// Where the virtio-net device's tap comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapSource {
    /// Open (or create) the tap interface of this name.
    Name(String),
    /// Adopt this inherited file descriptor. Building the VM takes ownership of it:
    /// nothing else in the process may use or close it.
    Fd(i32),
}

/// The virtio-net device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Its tap.
    pub tap: TapSource,
    /// Its MAC address.
    pub mac: [u8; 6],
}

/// How hull-vmm confines itself once the VM is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// What each thread's seccomp filter does to a syscall outside its list; `None`
    /// (`--no-seccomp`): no filters.
    pub seccomp: Option<crate::seccomp::Mode>,
    /// The user and group to become, if any.
    pub run_as: Option<crate::privileges::Identity>,
    /// The directory to make the root, if any.
    pub chroot: Option<PathBuf>,
}

impl From<&Cli> for Sandbox {
    fn from(cli: &Cli) -> Self {
        Sandbox {
            seccomp: match (cli.no_seccomp, cli.seccomp_trap) {
                (true, _) => None,
                (false, true) => Some(crate::seccomp::Mode::Trap),
                (false, false) => Some(crate::seccomp::Mode::Kill),
            },
            run_as: cli
                .uid
                .zip(cli.gid)
                .map(|(uid, gid)| crate::privileges::Identity { uid, gid }),
            chroot: cli.chroot.clone(),
        }
    }
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
    /// Guest kernel (PVH ELF `vmlinux` or `bzImage`).
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
    /// virtio-blk disks, in guest order.
    pub block: Vec<BlockConfig>,
    /// The virtio-net device, if any.
    pub net: Option<NetConfig>,
    /// The control socket, if any.
    pub api_sock: Option<PathBuf>,
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
    /// A block image is missing or not a regular file.
    #[error("--block {0}: not a regular file")]
    BlockPath(PathBuf),
    /// The MAC address does not parse, or is multicast.
    #[error("--mac {0:?}: not a unicast MAC address like 06:00:ac:10:00:02")]
    Mac(String),
    /// The tap name cannot be an interface name.
    #[error("--tap {0:?}: not an interface name (1..=15 bytes, no '/', NUL or space)")]
    TapName(String),
    /// The tap fd is one of stdin/stdout/stderr, negative, or not open.
    #[error("--tap-fd {0}: not an open, inherited file descriptor above 2")]
    TapFd(i32),
    /// --mac without a network device.
    #[error("--mac needs --tap or --tap-fd")]
    MacWithoutTap,
    /// The control socket path is empty or its directory does not exist.
    #[error("--api-sock {0}: its directory does not exist")]
    ApiSockPath(PathBuf),
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

/// Parses `aa:bb:cc:dd:ee:ff` into a unicast MAC.
pub fn parse_mac(s: &str) -> Result<[u8; 6], ConfigError> {
    let err = || ConfigError::Mac(s.into());
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next().filter(|p| p.len() == 2).ok_or_else(err)?;
        *b = u8::from_str_radix(p, 16).map_err(|_| err())?;
    }
    if parts.next().is_some() || mac[0] & 1 != 0 {
        return Err(err());
    }
    Ok(mac)
}

fn parse_block(spec: &str) -> Result<BlockConfig, ConfigError> {
    let (path, read_only) = match spec.strip_suffix(",ro") {
        Some(p) => (PathBuf::from(p), true),
        None => (PathBuf::from(spec), false),
    };
    if !path.is_file() {
        return Err(ConfigError::BlockPath(path));
    }
    Ok(BlockConfig { path, read_only })
}

fn parse_net(cli: &Cli) -> Result<Option<NetConfig>, ConfigError> {
    let tap = match (&cli.tap, cli.tap_fd) {
        (Some(name), _) => {
            if name.is_empty() || name.len() > 15 || name.contains(['/', '\0', ' ']) {
                return Err(ConfigError::TapName(name.clone()));
            }
            TapSource::Name(name.clone())
        }
        (None, Some(fd)) => {
            // SAFETY: F_GETFD only reads the descriptor's flags; any integer is a valid
            // argument (an unopened one fails with EBADF).
            if fd <= 2 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(ConfigError::TapFd(fd));
            }
            TapSource::Fd(fd)
        }
        (None, None) if cli.mac.is_some() => return Err(ConfigError::MacWithoutTap),
        (None, None) => return Ok(None),
    };
    let mac = match &cli.mac {
        Some(m) => parse_mac(m)?,
        None => crate::devices::virtio::net::DEFAULT_MAC,
    };
    Ok(Some(NetConfig { tap, mac }))
}

/// Whether `p` names a file in an existing directory (a socket hull-vmm can create).
fn socket_path_ok(p: &Path) -> bool {
    let dir = match p.parent() {
        Some(d) if d.as_os_str().is_empty() => Path::new("."),
        Some(d) => d,
        None => return false,
    };
    p.file_name().is_some() && dir.is_dir()
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
        let block = cli
            .block
            .iter()
            .map(|b| parse_block(b))
            .collect::<Result<Vec<_>, _>>()?;
        let net = parse_net(&cli)?;
        if let Some(p) = &cli.api_sock {
            if !socket_path_ok(p) {
                return Err(ConfigError::ApiSockPath(p.clone()));
            }
        }
        let mut fs = Vec::with_capacity(cli.fs.len());
        for value in &cli.fs {
            let share = parse_fs(value, &fs)?;
            fs.push(share);
        }
        Ok(VmResources {
            block,
            net,
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
            api_sock: cli.api_sock,
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
    fn api_socket_needs_an_existing_directory() {
        let (_d, k, _i) = files();
        let k = k.to_str().unwrap();
        for bad in ["/nonexistent/dir/api.sock", "/"] {
            let err = VmResources::try_from(parse(&["--kernel", k, "--api-sock", bad]).unwrap())
                .unwrap_err();
            assert_eq!(err, ConfigError::ApiSockPath(bad.into()));
        }
        let r =
            VmResources::try_from(parse(&["--kernel", k, "--api-sock", "/tmp/a.sock"]).unwrap())
                .unwrap();
        assert_eq!(r.api_sock, Some("/tmp/a.sock".into()));
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
        assert_eq!(r.api_sock, None);
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
    fn seccomp_is_on_unless_turned_off_and_uid_needs_gid() {
        let (_d, k, _i) = files();
        let k = k.to_str().unwrap();
        let s = Sandbox::from(&parse(&["--kernel", k]).unwrap());
        assert_eq!(
            s,
            Sandbox {
                seccomp: Some(crate::seccomp::Mode::Kill),
                run_as: None,
                chroot: None
            }
        );
        let s = Sandbox::from(
            &parse(&[
                "--kernel",
                k,
                "--no-seccomp",
                "--uid",
                "65534",
                "--gid",
                "65533",
            ])
            .unwrap(),
        );
        assert_eq!(
            s,
            Sandbox {
                seccomp: None,
                run_as: Some(crate::privileges::Identity {
                    uid: 65534,
                    gid: 65533
                }),
                chroot: None
            }
        );
        let s = Sandbox::from(&parse(&["--kernel", k, "--seccomp-trap"]).unwrap());
        assert_eq!(s.seccomp, Some(crate::seccomp::Mode::Trap));
        assert!(parse(&["--kernel", k, "--seccomp-trap", "--no-seccomp"]).is_err());
        assert!(parse(&["--kernel", k, "--uid", "1"]).is_err());
        assert!(parse(&["--kernel", k, "--chroot", "/srv"]).is_err());
        let s = Sandbox::from(
            &parse(&[
                "--kernel", k, "--chroot", "/srv", "--uid", "1", "--gid", "1",
            ])
            .unwrap(),
        );
        assert_eq!(s.chroot, Some(PathBuf::from("/srv")));
        assert!(parse(&["--kernel", k, "--gid", "1"]).is_err());
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

    #[test]
    fn block_and_net_flags_become_resources() {
        let (d, k, i) = files();
        let img = d.path().join("disk.img");
        std::fs::write(&img, [0u8; 512]).unwrap();
        let ro = format!("{},ro", i.display());
        let r = VmResources::try_from(
            parse(&[
                "--kernel",
                k.to_str().unwrap(),
                "--block",
                img.to_str().unwrap(),
                "--block",
                &ro,
                "--tap",
                "tap0",
                "--mac",
                "02:00:00:aB:cd:ef",
            ])
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            r.block,
            vec![
                BlockConfig {
                    path: img,
                    read_only: false
                },
                BlockConfig {
                    path: i,
                    read_only: true
                }
            ]
        );
        assert_eq!(
            r.net,
            Some(NetConfig {
                tap: TapSource::Name("tap0".into()),
                mac: [2, 0, 0, 0xab, 0xcd, 0xef]
            })
        );
        let r = VmResources::try_from(parse(&["--kernel", k.to_str().unwrap()]).unwrap()).unwrap();
        assert_eq!((r.block, r.net), (vec![], None));
    }

    #[test]
    fn tap_fd_must_be_open_and_above_stdio() {
        let (_d, k, _i) = files();
        let k = k.to_str().unwrap();
        let f = tempfile::tempfile().unwrap();
        let fd = std::os::unix::io::AsRawFd::as_raw_fd(&f);
        let r =
            VmResources::try_from(parse(&["--kernel", k, "--tap-fd", &fd.to_string()]).unwrap())
                .unwrap();
        assert_eq!(
            r.net,
            Some(NetConfig {
                tap: TapSource::Fd(fd),
                mac: crate::devices::virtio::net::DEFAULT_MAC
            })
        );
        for bad in [1, 4000, -3] {
            let err =
                VmResources::try_from(parse(&["--kernel", k, &format!("--tap-fd={bad}")]).unwrap())
                    .unwrap_err();
            assert_eq!(err, ConfigError::TapFd(bad));
        }
        assert!(parse(&["--kernel", k, "--tap", "t", "--tap-fd", "5"]).is_err());
    }

    #[test]
    fn bad_block_tap_and_mac_values_are_rejected() {
        let (_d, k, _i) = files();
        let k = k.to_str().unwrap();
        let check = |args: &[&str], want: ConfigError| {
            let mut a = vec!["--kernel", k];
            a.extend(args);
            assert_eq!(VmResources::try_from(parse(&a).unwrap()).unwrap_err(), want);
        };
        check(
            &["--block", "/nonexistent/d.img,ro"],
            ConfigError::BlockPath("/nonexistent/d.img".into()),
        );
        check(&["--block", "/"], ConfigError::BlockPath("/".into()));
        check(
            &["--tap", "a-name-longer-than-15"],
            ConfigError::TapName("a-name-longer-than-15".into()),
        );
        check(&["--tap", "a/b"], ConfigError::TapName("a/b".into()));
        check(&["--mac", "02:00:00:00:00:01"], ConfigError::MacWithoutTap);
        for bad in [
            "01:00:00:00:00:01", // multicast
            "02:00:00:00:00",
            "02:00:00:00:00:01:03",
            "02:00:00:00:00:zz",
            "2:00:00:00:00:01",
        ] {
            check(&["--tap", "t0", "--mac", bad], ConfigError::Mac(bad.into()));
        }
    }
}
