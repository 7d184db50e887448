//! Small helpers shared by the host-side modules.

use std::path::{Path, PathBuf};

/// Mount points at or below `dir`, deepest first, from a mountinfo text.
pub fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lazily unmounts everything mounted at or below `dir` (deepest first). Errors are logged.
pub fn unmount_all_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for m in mounts_under(&info, dir) {
        if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
            log::warn!("unmounting {}: {e}", m.display());
        }
    }
}

/// The last 64 KiB of a file as text; bytes that are not UTF-8 are replaced.
fn read_tail(path: &Path) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    const MAX: u64 = 64 * 1024;
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(MAX)))?;
    let mut buf = Vec::new();
    f.take(MAX).read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Writes `bytes` to `path` whole or not at all (a temporary file beside it, then a rename),
/// creating the parent directory; for host-wide caches other shims read concurrently.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The last `lines` lines of a log file as one string (lines joined by ` / `), or a note
/// saying why there are none. Reads at most the last 64 KiB; bytes that are not UTF-8 are
/// replaced (the file may hold guest output).
pub fn tail_of_file(path: &Path, lines: usize) -> String {
    let text = match read_tail(path) {
        Ok(t) => t,
        Err(e) => return format!("(no {}: {e})", path.display()),
    };
    let picked: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    if picked.is_empty() {
        return "(empty)".into();
    }
    picked[picked.len().saturating_sub(lines)..].join(" / ")
}

/// The first line of the file's last 64 KiB that contains `needle`, trimmed.
pub fn first_line_containing(path: &Path, needle: &str) -> Option<String> {
    let text = read_tail(path).ok()?;
    text.lines()
        .find(|l| l.contains(needle))
        .map(|l| l.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_under_a_dir_are_listed_deepest_first() {
        let info = "22 1 0:21 / /run rw - tmpfs tmpfs rw\n\
                    30 22 0:40 / /run/hull/p1/share/c1/rootfs rw - overlay overlay rw\n\
                    31 22 0:41 / /run/hull/p1/share rw - tmpfs t rw\n\
                    32 22 0:42 / /run/hull/p10 rw - tmpfs t rw\n\
                    33 22 0:43 / /run/hull/p1/with\\040space rw - tmpfs t rw\n";
        let m = mounts_under(info, Path::new("/run/hull/p1"));
        assert_eq!(
            m,
            vec![
                PathBuf::from("/run/hull/p1/share/c1/rootfs"),
                PathBuf::from("/run/hull/p1/share"),
                PathBuf::from("/run/hull/p1/with space"),
            ]
        );
    }

    #[test]
    fn first_line_containing_finds_the_earliest_match() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(
            &p,
            "boot\n Kernel panic - one \ntrace\nKernel panic - two\n",
        )
        .unwrap();
        assert_eq!(
            first_line_containing(&p, "Kernel panic").as_deref(),
            Some("Kernel panic - one")
        );
        assert_eq!(first_line_containing(&p, "nothing"), None);
        assert_eq!(first_line_containing(&dir.path().join("none"), "x"), None);
    }

    #[test]
    fn tail_takes_the_last_non_empty_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "a\nb\n\nc\nd\n").unwrap();
        assert_eq!(tail_of_file(&p, 2), "c / d");
        assert_eq!(tail_of_file(&p, 10), "a / b / c / d");
        std::fs::write(&p, "").unwrap();
        assert_eq!(tail_of_file(&p, 3), "(empty)");
        assert!(tail_of_file(&dir.path().join("none"), 3).starts_with("(no "));
    }

    #[test]
    fn tail_survives_binary_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, b"\xff\xfe\x00ok\n").unwrap();
        assert!(tail_of_file(&p, 1).ends_with("ok"));
    }
}
