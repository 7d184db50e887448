//! Unix socket files that appear only once they accept connections.
//!
//! `bind(2)` creates the socket's file before `listen(2)` makes it accept, so a client that
//! waits for the file (the shim, the tests, `hull bench vmm`) can see it and still be refused
//! with `ECONNREFUSED`. [`bind_listening`] binds and listens under a temporary name in the
//! same directory and renames the socket into place: its path exists only as a listening
//! socket.

use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Longest path `bind(2)` takes (`sun_path` holds 108 bytes with the terminating NUL).
const SUN_PATH_MAX: usize = 107;

/// Binds a listening socket at `path`. A stale socket there is replaced; any other kind of
/// file is an `AlreadyExists` error and is left alone.
pub fn bind_listening(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {}
        Ok(_) => {
            return Err(std::io::Error::new(
                ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let Some(temp) = temp_name(path) else {
        // No room for a temporary name next to it: bind in place (the file may then be seen
        // a moment before it listens).
        let _ = std::fs::remove_file(path);
        return UnixListener::bind(path);
    };
    // A leftover of a process that had this pid before is ours to replace.
    let _ = std::fs::remove_file(&temp);
    // std's bind also listens.
    let listener = UnixListener::bind(&temp)?;
    // rename(2) replaces a stale socket atomically.
    if let Err(e) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    Ok(listener)
}

/// `.<pid>.<n>.bind` next to `path` (n counts this process's binds), if that fits in
/// `sun_path`.
fn temp_name(path: &Path) -> Option<PathBuf> {
    static BINDS: AtomicU32 = AtomicU32::new(0);
    let n = BINDS.fetch_add(1, Ordering::Relaxed);
    let name = format!(".{}.{n}.bind", std::process::id());
    let temp = path.with_file_name(name);
    (temp.as_os_str().as_bytes().len() <= SUN_PATH_MAX).then_some(temp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn the_socket_listens_under_its_name_and_nothing_else_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let l = bind_listening(&path).unwrap();
        UnixStream::connect(&path).unwrap();
        l.accept().unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("api.sock")]);
    }

    #[test]
    fn a_stale_socket_is_replaced_and_another_file_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        drop(UnixListener::bind(&path).unwrap());
        assert_eq!(
            UnixStream::connect(&path).unwrap_err().kind(),
            ErrorKind::ConnectionRefused
        );
        let _l = bind_listening(&path).unwrap();
        UnixStream::connect(&path).unwrap();

        let file = dir.path().join("f");
        std::fs::write(&file, "keep").unwrap();
        let e = bind_listening(&file).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    }

    #[test]
    fn a_path_with_no_room_for_a_temporary_name_is_bound_in_place() {
        let dir = tempfile::tempdir().unwrap();
        // A directory whose path plus "/s" is exactly as long as bind takes.
        let pad = SUN_PATH_MAX - dir.path().as_os_str().len() - 3;
        let sub = dir.path().join("d".repeat(pad));
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("s");
        assert_eq!(path.as_os_str().len(), SUN_PATH_MAX);
        assert!(temp_name(&path).is_none());
        let _l = bind_listening(&path).unwrap();
        UnixStream::connect(&path).unwrap();
    }
}
