//! The host side of virtio-net: a Linux tap device, opened by name on `/dev/net/tun` or
//! taken over as an inherited file descriptor (the shim opens it in the pod's network
//! namespace and passes it down).
//!
//! Either way the tap is set up the same: `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a 12-byte
//! vnet header (`struct virtio_net_hdr_v1`, what a VERSION_1 driver uses), no offloads
//! (the host kernel checksums and segments before a frame reaches us), non-blocking. An
//! inherited fd that is not such a tap is refused.
//!
//! The ioctl numbers and `struct ifreq` are written out here: they are three stable Linux
//! UAPI constants, and the rust-vmm crates do not export tap bindings.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};

use thiserror::Error;
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref};
use vmm_sys_util::{ioctl_ior_nr, ioctl_iow_nr};

/// Size of the vnet header the tap and the guest exchange (`virtio_net_hdr_v1`).
pub const VNET_HDR_SIZE: usize = 12;

const TUNTAP: u32 = 0x54;
ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, ::std::os::raw::c_int);
ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, ::std::os::raw::c_uint);
ioctl_ior_nr!(TUNGETIFF, TUNTAP, 210, ::std::os::raw::c_uint);
ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, ::std::os::raw::c_int);

const IFF_TAP: u16 = 0x0002;
const IFF_NO_PI: u16 = 0x1000;
const IFF_VNET_HDR: u16 = 0x4000;
const IFNAMSIZ: usize = 16;

/// `struct ifreq` as TUNSETIFF/TUNGETIFF use it: the name and the flags of the union.
#[repr(C)]
#[derive(Debug, Default)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: u16,
    _pad: [u8; 22],
}

/// Errors of opening or adopting a tap.
#[derive(Debug, Error)]
pub enum TapError {
    /// The interface name is empty, too long or contains a NUL byte.
    #[error("tap name {0:?} is not a valid interface name (1..=15 bytes, no NUL)")]
    Name(String),
    /// /dev/net/tun could not be opened.
    #[error("opening /dev/net/tun: {0}")]
    OpenTun(std::io::Error),
    /// TUNSETIFF failed (no CAP_NET_ADMIN, or the name is taken by a non-tap).
    #[error("creating or attaching tap {name}: {source}")]
    SetIff {
        /// The interface.
        name: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The inherited fd is not a tap (TUNGETIFF failed).
    #[error("fd {fd} is not a tap device: {source}")]
    NotTap {
        /// The fd.
        fd: RawFd,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The inherited tap lacks IFF_TAP, IFF_NO_PI or IFF_VNET_HDR.
    #[error("tap {name} has flags {flags:#x}, it needs IFF_TAP|IFF_NO_PI|IFF_VNET_HDR")]
    Flags {
        /// The interface.
        name: String,
        /// Its flags.
        flags: u16,
    },
    /// Setting the vnet header size, the offloads or O_NONBLOCK failed.
    #[error("configuring tap {name}: {what}: {source}")]
    Configure {
        /// The interface.
        name: String,
        /// Which step.
        what: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// An open, configured tap.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

fn name_of(req: &IfReq) -> String {
    let end = req.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
    String::from_utf8_lossy(&req.name[..end]).into_owned()
}

impl Tap {
    /// Opens (creating it if needed) the tap interface `name`.
    pub fn open(name: &str) -> Result<Self, TapError> {
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains('\0') {
            return Err(TapError::Name(name.into()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            ..Default::default()
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads (and may update the name of) a `struct ifreq`; `req` is
        // one, laid out as the kernel expects, and lives across the call.
        if unsafe { ioctl_with_mut_ref(&file, TUNSETIFF(), &mut req) } < 0 {
            return Err(TapError::SetIff {
                name: name.into(),
                source: std::io::Error::last_os_error(),
            });
        }
        Tap::configure(file, name_of(&req))
    }

    /// Takes over the inherited file descriptor `fd`, which must be an open tap with
    /// IFF_TAP|IFF_NO_PI|IFF_VNET_HDR. `fd` is owned from here on: kept by the returned
    /// [`Tap`], closed on error.
    ///
    /// # Safety
    ///
    /// `fd` must be an open file descriptor that nothing else in this process owns or
    /// closes (it is closed when the [`Tap`] drops).
    pub unsafe fn from_raw_fd(fd: RawFd) -> Result<Self, TapError> {
        // SAFETY: the caller guarantees `fd` is open and ours alone.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut req = IfReq::default();
        // SAFETY: TUNGETIFF writes a `struct ifreq` into `req`, which is one and lives
        // across the call; on a non-tap fd the ioctl fails and writes nothing.
        if unsafe { ioctl_with_mut_ref(&file, TUNGETIFF(), &mut req) } < 0 {
            return Err(TapError::NotTap {
                fd,
                source: std::io::Error::last_os_error(),
            });
        }
        let want = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        if req.flags & want != want {
            return Err(TapError::Flags {
                name: name_of(&req),
                flags: req.flags,
            });
        }
        let name = name_of(&req);
        // SAFETY: F_SETFD on an fd we own, with an integer argument.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(TapError::Configure {
                name,
                what: "FD_CLOEXEC",
                source: std::io::Error::last_os_error(),
            });
        }
        Tap::configure(file, name)
    }

    fn configure(file: File, name: String) -> Result<Self, TapError> {
        let err = |what, source| TapError::Configure {
            name: name.clone(),
            what,
            source,
        };
        let hdr = VNET_HDR_SIZE as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int, which `hdr` is.
        if unsafe { ioctl_with_ref(&file, TUNSETVNETHDRSZ(), &hdr) } < 0 {
            return Err(err("vnet header size", std::io::Error::last_os_error()));
        }
        // SAFETY: TUNSETOFFLOAD takes its flags by value; 0 turns every offload off.
        if unsafe { vmm_sys_util::ioctl::ioctl_with_val(&file, TUNSETOFFLOAD(), 0) } < 0 {
            return Err(err("offloads", std::io::Error::last_os_error()));
        }
        let fd = file.as_raw_fd();
        // SAFETY: F_GETFL/F_SETFL on an fd `file` owns, with integer arguments.
        let ok = unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            fl >= 0 && libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) >= 0
        };
        if !ok {
            return Err(err("O_NONBLOCK", std::io::Error::last_os_error()));
        }
        Ok(Tap { file, name })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The open tap, for the device's worker.
    pub fn into_file(self) -> File {
        self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux() {
        assert_eq!(TUNSETIFF(), 0x4004_54ca);
        assert_eq!(TUNSETOFFLOAD(), 0x4004_54d0);
        assert_eq!(TUNGETIFF(), 0x8004_54d2);
        assert_eq!(TUNSETVNETHDRSZ(), 0x4004_54d8);
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        for bad in ["", "a-name-that-is-too-long", "a\0b"] {
            assert!(matches!(Tap::open(bad), Err(TapError::Name(_))), "{bad:?}");
        }
    }

    #[test]
    fn an_fd_that_is_not_a_tap_is_refused() {
        let f = tempfile::tempfile().unwrap();
        let fd = std::os::unix::io::IntoRawFd::into_raw_fd(f);
        // SAFETY: `fd` was just released by its File and is owned by nobody else.
        let err = unsafe { Tap::from_raw_fd(fd) }.unwrap_err();
        assert!(matches!(err, TapError::NotTap { .. }), "{err}");
    }

    #[test]
    #[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun: run with --ignored as root"]
    fn a_tap_opened_by_name_can_be_adopted_by_fd() {
        let tap = Tap::open("hulltest%d").expect("TUNSETIFF (root and /dev/net/tun?)");
        assert!(tap.name().starts_with("hulltest"), "{}", tap.name());
        let name = tap.name().to_string();
        let fd = std::os::unix::io::IntoRawFd::into_raw_fd(tap.into_file());
        // SAFETY: `fd` was just released by its File and is owned by nobody else.
        let again = unsafe { Tap::from_raw_fd(fd) }.unwrap();
        assert_eq!(again.name(), name);
    }
}
