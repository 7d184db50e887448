//! How the installed QEMU drops privileges, for confined pods ([`super::jail`]).
//!
//! QEMU up to 8.2 has `-runas USER|UID:GID` and `-chroot DIR`. 9.0 removed `-chroot` and 10.0
//! `-runas`, in favour of `-run-with chroot=DIR,user=USER|UID:GID` (`user=` since 9.1). Which
//! one a binary speaks is read from its `-help`; running QEMU for that costs tens of
//! milliseconds, so the answer is recorded in [`CACHE_PATH`] keyed by the binary's path,
//! size and modification time (a QEMU upgrade is seen at once).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the answer is recorded (host-wide, like the KVM verdict).
pub const CACHE_PATH: &str = "/run/hull/.qemu-privdrop.json";

/// The options a QEMU binary drops privileges with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrivDrop {
    /// `-run-with chroot=DIR,user=UID:GID` (QEMU 9.1 and later).
    RunWith,
    /// `-runas UID:GID -chroot DIR` (QEMU 8.2 and earlier).
    RunAs,
    /// Neither: this QEMU cannot be confined.
    Unsupported,
}

impl PrivDrop {
    /// Reads the style from `qemu -help`.
    pub fn from_help(help: &str) -> PrivDrop {
        let has = |opt: &str| help.lines().any(|l| l.trim_start().starts_with(opt));
        if has("-run-with") && help.contains("user=") {
            PrivDrop::RunWith
        } else if has("-runas") && has("-chroot") {
            PrivDrop::RunAs
        } else {
            PrivDrop::Unsupported
        }
    }

    /// The options that make QEMU become `id` (uid and gid) in `root` before the guest
    /// runs; empty for [`PrivDrop::Unsupported`].
    pub fn args(self, id: u32, root: &Path) -> Vec<String> {
        let root = root.display();
        match self {
            PrivDrop::RunWith => vec!["-run-with".into(), format!("chroot={root},user={id}:{id}")],
            PrivDrop::RunAs => vec![
                "-runas".into(),
                format!("{id}:{id}"),
                "-chroot".into(),
                root.to_string(),
            ],
            PrivDrop::Unsupported => Vec::new(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Cached {
    key: String,
    style: PrivDrop,
}

fn key(binary: &Path) -> Option<String> {
    let m = std::fs::metadata(binary).ok()?;
    Some(format!(
        "{}:{}:{}.{}",
        binary.display(),
        m.len(),
        m.mtime(),
        m.mtime_nsec()
    ))
}

/// The style of `binary` (a path, or a name looked up in PATH), from the record at `cache`
/// if it is for this very file, else by running its `-help` (and recording the answer; best
/// effort). `Err` says why QEMU could not be asked.
pub async fn privdrop(binary: &Path, cache: &Path) -> Result<PrivDrop, String> {
    let path: PathBuf = crate::check::which(&binary.to_string_lossy())
        .ok_or_else(|| format!("{} not found in PATH", binary.display()))?;
    let key = key(&path);
    let cached = std::fs::read(cache)
        .ok()
        .and_then(|b| serde_json::from_slice::<Cached>(&b).ok())
        .filter(|c| key.as_deref() == Some(c.key.as_str()));
    if let Some(c) = cached {
        return Ok(c.style);
    }
    let run = tokio::process::Command::new(&path)
        .arg("-help")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .map_err(|_| format!("{} -help did not answer within 5 s", path.display()))?
        .map_err(|e| format!("running {} -help: {e}", path.display()))?;
    let style = PrivDrop::from_help(&String::from_utf8_lossy(&out.stdout));
    if let Some(key) = key {
        if let Ok(json) = serde_json::to_vec(&Cached { key, style }) {
            if let Err(e) = crate::util::write_atomic(cache, &json) {
                log::debug!("recording QEMU's options at {}: {e}", cache.display());
            }
        }
    }
    Ok(style)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_qemu_generation_gets_its_own_options() {
        let q7 = "-runas user     change to user id user just before starting the VM\n\
                  -chroot dir     chroot to dir just before starting the VM\n";
        let q10 = "-run-with [async-teardown=on|off][,chroot=dir][user=username|uid:gid]\n";
        let q90 = "-runas user     change to user id user\n-run-with [async-teardown=on|off][,chroot=dir]\n";
        assert_eq!(PrivDrop::from_help(q7), PrivDrop::RunAs);
        assert_eq!(PrivDrop::from_help(q10), PrivDrop::RunWith);
        // 9.0: -chroot gone, -run-with without user=: neither way works.
        assert_eq!(PrivDrop::from_help(q90), PrivDrop::Unsupported);
        let root = Path::new("/run/hull/p/qemu-root");
        assert_eq!(
            PrivDrop::RunWith.args(7, root),
            ["-run-with", "chroot=/run/hull/p/qemu-root,user=7:7"]
        );
        assert_eq!(
            PrivDrop::RunAs.args(7, root),
            ["-runas", "7:7", "-chroot", "/run/hull/p/qemu-root"]
        );
        assert!(PrivDrop::Unsupported.args(7, root).is_empty());
    }

    #[tokio::test]
    async fn the_installed_qemu_is_asked_once_and_the_answer_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("caps.json");
        // A stand-in QEMU that counts how often it is asked.
        let qemu = dir.path().join("qemu");
        let count = dir.path().join("asked");
        crate::util::write_script(
            &qemu,
            &format!(
                "#!/bin/sh\necho x >> {}\necho '-runas user   change'\necho '-chroot dir   chroot'\n",
                count.display()
            ),
        );
        assert_eq!(privdrop(&qemu, &cache).await, Ok(PrivDrop::RunAs));
        assert_eq!(privdrop(&qemu, &cache).await, Ok(PrivDrop::RunAs));
        assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 1);
        // A new binary (another size) is asked again.
        crate::util::write_script(&qemu, "#!/bin/sh\necho '-run-with [chroot=dir][user=u]'\n");
        assert_eq!(privdrop(&qemu, &cache).await, Ok(PrivDrop::RunWith));
        assert!(privdrop(&dir.path().join("none"), &cache).await.is_err());
    }
}
