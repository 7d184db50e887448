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

/// Up to `max` paths under `dir`, depth first (for error messages about what is left).
pub fn entries_under(dir: &Path, max: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if found.len() == max {
                return found;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
            found.push(e.path());
        }
    }
    found
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

/// `__SO_ACCEPTCON` in `/proc/net/unix`'s Flags column: the socket is listening.
const SO_ACCEPTCON: u32 = 0x0001_0000;

/// Whether process `pid` holds a listening unix socket bound to a file named like `socket`.
///
/// A daemon's socket file exists from its `bind(2)`, but connections are refused until its
/// `listen(2)`; QEMU and hull-vmm connect once and give up. The socket is found by the
/// daemon's own descriptors (its `/proc/<pid>/fd` links to `socket:[inode]`) in its network
/// namespace's `/proc/<pid>/net/unix`; the file name is compared, not the whole path, since
/// a daemon may have bound a path relative to its working directory.
pub fn holds_listening_socket(pid: u32, socket: &Path) -> bool {
    let Some(name) = socket.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/unix")) else {
        return false;
    };
    let listening = listening_inodes_named(&table, name);
    if listening.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse::<u64>()
                .ok()
        })
        .any(|ino| listening.contains(&ino))
}

/// Inodes of the listening sockets in a `/proc/net/unix` table whose path ends in `name`.
fn listening_inodes_named(table: &str, name: &str) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // Num RefCount Protocol Flags Type St Inode [Path]
            let mut f = line.split_whitespace();
            let flags = u32::from_str_radix(f.nth(3)?, 16).ok()?;
            let inode = f.nth(2)?.parse::<u64>().ok()?;
            let path = Path::new(f.next()?);
            (flags & SO_ACCEPTCON != 0 && path.file_name()?.to_str()? == name).then_some(inode)
        })
        .collect()
}

/// Writes an executable script for a test, from a child process: a sibling test that forks
/// while this process holds the file open for writing would pass that descriptor on until
/// its exec, and running the script then fails with ETXTBSY ("Text file busy").
#[cfg(test)]
pub(crate) fn write_script(path: &Path, text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("sh")
        .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("running sh");
    let mut stdin = child.stdin.take().expect("a pipe");
    stdin
        .write_all(text.as_bytes())
        .expect("writing the script");
    drop(stdin);
    assert!(
        child.wait().expect("waiting for sh").success(),
        "writing {}",
        path.display()
    );
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
    #[test]
    fn listening_sockets_are_told_from_bound_ones_by_name() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 101 vhost-vsock.sock\n\
            0000000000000000: 00000002 00000000 00000000 0001 01 102 /run/hull/p/virtiofs.sock\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 103 /run/hull/q/virtiofs.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 104\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 105 @abstract\n\
            garbage\n";
        assert_eq!(listening_inodes_named(table, "vhost-vsock.sock"), vec![101]);
        assert_eq!(listening_inodes_named(table, "virtiofs.sock"), vec![103]);
        assert!(listening_inodes_named(table, "api.sock").is_empty());
    }

    #[test]
    fn a_bound_socket_listens_only_after_listen() {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.sock");
        let pid = std::process::id();
        // bind(2) without listen(2), as a daemon is between the two.
        let fd = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let addr = nix::sys::socket::UnixAddr::new(path.as_os_str().as_bytes()).unwrap();
        nix::sys::socket::bind(fd.as_raw_fd(), &addr).unwrap();
        assert!(path.exists());
        assert!(!holds_listening_socket(pid, &path));
        nix::sys::socket::listen(&fd, nix::sys::socket::Backlog::new(8).unwrap()).unwrap();
        assert!(holds_listening_socket(pid, &path));
        assert!(!holds_listening_socket(pid, &dir.path().join("other.sock")));
    }
}
