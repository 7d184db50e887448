//! Where the guest image (kernel + initramfs) is found.
//!
//! `make install` puts it in [`DEFAULT_IMAGE_DIR`]; `HULL_KERNEL` and `HULL_INITRD` override
//! each file (tests point them at the build cache). This module does not build images: see
//! `guest-image/`.

use std::path::PathBuf;

/// Where `make install` puts the guest kernel and initramfs.
pub const DEFAULT_IMAGE_DIR: &str = "/usr/local/share/hull";

/// Paths of a guest image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// PVH-bootable `vmlinux`.
    pub kernel: PathBuf,
    /// Initramfs whose `/init` is hull-agent.
    pub initrd: PathBuf,
}

impl GuestImage {
    /// The image named by `HULL_KERNEL`/`HULL_INITRD`, else the installed one.
    pub fn from_env() -> Self {
        Self::resolve(
            std::env::var_os("HULL_KERNEL"),
            std::env::var_os("HULL_INITRD"),
        )
    }

    /// The image `make install` put in [`DEFAULT_IMAGE_DIR`].
    pub fn installed() -> Self {
        Self::resolve(None, None)
    }

    fn resolve(kernel: Option<std::ffi::OsString>, initrd: Option<std::ffi::OsString>) -> Self {
        let dir = PathBuf::from(DEFAULT_IMAGE_DIR);
        GuestImage {
            kernel: kernel
                .map(PathBuf::from)
                .unwrap_or_else(|| dir.join("vmlinux")),
            initrd: initrd
                .map(PathBuf::from)
                .unwrap_or_else(|| dir.join("initramfs.cpio")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_over_the_installed_image() {
        let d = GuestImage::resolve(None, None);
        assert_eq!(d.kernel, PathBuf::from("/usr/local/share/hull/vmlinux"));
        assert_eq!(
            d.initrd,
            PathBuf::from("/usr/local/share/hull/initramfs.cpio")
        );
        let o = GuestImage::resolve(Some("/k".into()), None);
        assert_eq!(o.kernel, PathBuf::from("/k"));
        assert_eq!(o.initrd, d.initrd);
    }
}
