//! Where a process's output goes: containerd's stdout/stderr strings, which name FIFOs or
//! log URIs, as containerd's runtime v2 shims interpret them.
//!
//! - a plain path or `fifo://PATH`: a named FIFO (what `ctr` and the CRI plugin create);
//! - `file:///PATH`: stdout and stderr are appended to one file (created 0644 with its
//!   directories, like containerd's runc shim);
//! - `binary:///PATH?key=value&flag`: a logging program started per process with stdout's
//!   pipe on fd 3, stderr's on fd 4 and a readiness pipe on fd 5, which it closes (or writes
//!   a byte to) when it is ready; `CONTAINER_ID` and `CONTAINER_NAMESPACE` in its
//!   environment; each query pair becomes `-key value` (`-flag` alone for an empty value).
//!   It sees EOF on fd 3/4 once the process's output is complete, and is given
//!   [`LOGGER_EXIT_GRACE`] to exit before it is killed.
//!
//! As in containerd's shims, a log URI in stdout decides for both streams (stderr names the
//! same URI). This module opens the targets; the copying is in [`super::stdio`].

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use thiserror::Error;
use tokio::io::AsyncWrite;
use tokio::net::unix::pipe;

/// How long a logging binary has to signal readiness.
pub const LOGGER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a logging binary has to exit after its input ended (containerd's shims wait
/// 12 s).
pub const LOGGER_EXIT_GRACE: Duration = Duration::from_secs(12);

/// Errors of opening an output target.
#[derive(Debug, Error)]
pub enum LogError {
    /// The stdout/stderr string is not a path or a URI hull understands.
    #[error("invalid log URI {uri:?}: {reason}")]
    InvalidUri {
        /// The string.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The FIFO or file could not be opened.
    #[error("opening {path}: {source}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The logging binary could not be started, or did not become ready.
    #[error("logging binary {path}: {reason}")]
    Logger {
        /// The binary.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// A parsed stdout/stderr target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A named FIFO.
    Fifo(PathBuf),
    /// A file both streams are appended to.
    File(PathBuf),
    /// A logging program and its arguments.
    Binary {
        /// The program.
        path: PathBuf,
        /// Its arguments, from the URI's query.
        args: Vec<String>,
    },
}

/// Parses containerd's stdout/stderr string.
///
/// Hand-written rather than with the `url` crate: containerd's log URIs are only
/// `scheme://PATH?QUERY` with no authority, and the `url` crate would pull in IDNA tables
/// for it.
pub fn parse(uri: &str) -> Result<Target, LogError> {
    let bad = |reason: &str| LogError::InvalidUri {
        uri: uri.to_string(),
        reason: reason.to_string(),
    };
    let Some((scheme, rest)) = uri.split_once("://") else {
        if uri.starts_with('/') {
            return Ok(Target::Fifo(uri.into()));
        }
        return Err(bad(
            "expected an absolute FIFO path or a fifo://, file:// or binary:// URI",
        ));
    };
    let (raw_path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if !raw_path.starts_with('/') {
        return Err(bad(
            "the path must be absolute (scheme:///path), with no host",
        ));
    }
    let path =
        PathBuf::from(percent_decode(raw_path).ok_or_else(|| bad("bad %-escape in the path"))?);
    match scheme {
        "fifo" | "file" if query.is_some() => Err(bad("fifo and file URIs take no query")),
        "fifo" => Ok(Target::Fifo(path)),
        "file" => Ok(Target::File(path)),
        "binary" => {
            let mut args = Vec::new();
            for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let key = percent_decode(k).ok_or_else(|| bad("bad %-escape in the query"))?;
                let value = percent_decode(v).ok_or_else(|| bad("bad %-escape in the query"))?;
                args.push(format!("-{key}"));
                if !value.is_empty() {
                    args.push(value);
                }
            }
            Ok(Target::Binary { path, args })
        }
        other => Err(bad(&format!(
            "unknown scheme {other:?} (fifo, file, binary)"
        ))),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// An output writer.
pub type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// The opened outputs of one process.
#[derive(Default)]
pub struct Outputs {
    /// Where stdout goes, if anywhere.
    pub stdout: Option<Writer>,
    /// Where stderr goes, if anywhere.
    pub stderr: Option<Writer>,
    /// The logging binary, for `binary://`.
    pub logger: Option<tokio::process::Child>,
}

impl std::fmt::Debug for Outputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outputs")
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("logger", &self.logger.as_ref().and_then(|c| c.id()))
            .finish()
    }
}

fn open_fifo(path: PathBuf) -> Result<Writer, LogError> {
    // Read-write open never blocks and never fails for lack of a reader; the reader
    // (containerd/ctr) sees EOF once this, the only writer, closes.
    pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(&path)
        .map(|s| Box::new(s) as Writer)
        .map_err(|source| LogError::Open { path, source })
}

/// Opens the targets `stdout` and `stderr` name ("" = none) for a process of container
/// `container_id` in `namespace`.
pub async fn open(
    stdout: &str,
    stderr: &str,
    container_id: &str,
    namespace: &str,
) -> Result<Outputs, LogError> {
    let out_target = (!stdout.is_empty()).then(|| parse(stdout)).transpose()?;
    match out_target {
        Some(Target::File(path)) => {
            let open_err = |source| LogError::Open {
                path: path.clone(),
                source,
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(open_err)?;
            }
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o644)
                .open(&path)
                .map_err(open_err)?;
            let f2 = f.try_clone().map_err(open_err)?;
            Ok(Outputs {
                stdout: Some(Box::new(tokio::fs::File::from_std(f))),
                stderr: (!stderr.is_empty())
                    .then(|| Box::new(tokio::fs::File::from_std(f2)) as Writer),
                logger: None,
            })
        }
        Some(Target::Binary { path, args }) => {
            start_logger(path, &args, container_id, namespace, !stderr.is_empty()).await
        }
        Some(Target::Fifo(path)) => Ok(Outputs {
            stdout: Some(open_fifo(path)?),
            stderr: stderr_fifo(stderr, "stderr names a log URI while stdout names a FIFO")?,
            logger: None,
        }),
        None => Ok(Outputs {
            stdout: None,
            stderr: stderr_fifo(stderr, "a log URI must be given for stdout")?,
            logger: None,
        }),
    }
}

/// stderr's FIFO ("" = none) when stdout is a FIFO or absent; a log URI there is refused
/// with `why`.
fn stderr_fifo(stderr: &str, why: &str) -> Result<Option<Writer>, LogError> {
    match stderr {
        "" => Ok(None),
        s => match parse(s)? {
            Target::Fifo(p) => open_fifo(p).map(Some),
            _ => Err(LogError::InvalidUri {
                uri: s.to_string(),
                reason: why.into(),
            }),
        },
    }
}

/// A pipe whose ends are close-on-exec and numbered 10 or higher, so that placing them on
/// fds 3–5 in the child cannot overwrite one with another.
fn high_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    let high = |fd: OwnedFd| -> std::io::Result<OwnedFd> {
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
            .map_err(std::io::Error::from)
            .map(|raw| {
                // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
                unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) }
            })
    };
    Ok((high(r)?, high(w)?))
}

async fn start_logger(
    path: PathBuf,
    args: &[String],
    container_id: &str,
    namespace: &str,
    with_stderr: bool,
) -> Result<Outputs, LogError> {
    let fail = |reason: String| LogError::Logger {
        path: path.clone(),
        reason,
    };
    let (out_r, out_w) = high_pipe().map_err(|e| fail(format!("creating a pipe: {e}")))?;
    let (err_r, err_w) = high_pipe().map_err(|e| fail(format!("creating a pipe: {e}")))?;
    let (ready_r, ready_w) = high_pipe().map_err(|e| fail(format!("creating a pipe: {e}")))?;
    let child_fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = tokio::process::Command::new(&path);
    cmd.args(args)
        .env("CONTAINER_ID", container_id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    // SAFETY: the closure only calls dup2(2), which is async-signal-safe, on descriptors
    // that are open in the child (inherited from this process, all >= 10, see high_pipe);
    // dup2 clears close-on-exec on the copies, so exactly fds 3, 4 and 5 reach the program.
    unsafe {
        cmd.pre_exec(move || {
            for (target, fd) in (3..).zip(child_fds) {
                if libc::dup2(fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| fail(format!("starting it: {e}")))?;
    drop((out_r, err_r, ready_w));
    // Ready: the program closed fd 5 or wrote to it; EOF also comes if it died.
    let wait_ready = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut b = [0u8; 1];
        std::fs::File::from(ready_r).read(&mut b)
    });
    match tokio::time::timeout(LOGGER_READY_TIMEOUT, wait_ready).await {
        Ok(Ok(Ok(_))) => {}
        Ok(Ok(Err(e))) => return Err(fail(format!("waiting for readiness: {e}"))),
        Ok(Err(e)) => return Err(fail(format!("waiting for readiness: {e}"))),
        Err(_) => {
            let _ = child.kill().await;
            return Err(fail(format!(
                "did not close fd 5 within {LOGGER_READY_TIMEOUT:?}"
            )));
        }
    }
    // EOF on fd 5 also comes when the program dies at once; give that a moment to show.
    if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_millis(100), child.wait()).await {
        return Err(fail(format!("exited before reading the output ({status})")));
    }
    let sender = |fd: OwnedFd| -> Result<Writer, LogError> {
        pipe::Sender::from_owned_fd(fd)
            .map(|s| Box::new(s) as Writer)
            .map_err(|e| fail(format!("setting up its pipe: {e}")))
    };
    Ok(Outputs {
        stdout: Some(sender(out_w)?),
        stderr: if with_stderr {
            Some(sender(err_w)?)
        } else {
            None
        },
        logger: Some(child),
    })
}

/// Lets a logging binary finish once its input ended; kills it after [`LOGGER_EXIT_GRACE`].
pub async fn finish_logger(mut child: tokio::process::Child) {
    match tokio::time::timeout(LOGGER_EXIT_GRACE, child.wait()).await {
        Ok(Ok(status)) if !status.success() => log::warn!("logging binary exited with {status}"),
        Ok(_) => {}
        Err(_) => {
            log::warn!("logging binary did not exit within {LOGGER_EXIT_GRACE:?}; killing it");
            let _ = child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_uris_parse_like_containerd_reads_them() {
        assert_eq!(
            parse("/run/x/stdout").unwrap(),
            Target::Fifo("/run/x/stdout".into())
        );
        assert_eq!(
            parse("fifo:///run/x").unwrap(),
            Target::Fifo("/run/x".into())
        );
        assert_eq!(
            parse("file:///var/log/a%20b.log").unwrap(),
            Target::File("/var/log/a b.log".into())
        );
        assert_eq!(
            parse("binary:///usr/bin/logger?dir=/var/log/x&verbose&n=1").unwrap(),
            Target::Binary {
                path: "/usr/bin/logger".into(),
                args: vec![
                    "-dir".into(),
                    "/var/log/x".into(),
                    "-verbose".into(),
                    "-n".into(),
                    "1".into()
                ],
            }
        );
    }

    #[test]
    fn bad_uris_are_named_with_the_reason() {
        for (uri, why) in [
            ("relative/path", "absolute"),
            ("syslog:///x", "unknown scheme"),
            ("file://host/x", "no host"),
            ("file:///x?y=1", "no query"),
            ("binary:///x%zz", "%-escape"),
            ("binary:///x?a=%4", "%-escape"),
        ] {
            let e = parse(uri).unwrap_err().to_string();
            assert!(e.contains(uri) && e.contains(why), "{uri}: {e}");
        }
    }

    #[tokio::test]
    async fn file_uris_append_both_streams_to_one_file() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sub/c.log");
        std::fs::create_dir_all(dir.path()).unwrap();
        let uri = format!("file://{}", log.display());
        let mut o = open(&uri, &uri, "c", "ns").await.unwrap();
        o.stdout
            .as_mut()
            .unwrap()
            .write_all(b"out\n")
            .await
            .unwrap();
        o.stdout.as_mut().unwrap().flush().await.unwrap();
        o.stderr
            .as_mut()
            .unwrap()
            .write_all(b"err\n")
            .await
            .unwrap();
        o.stderr.as_mut().unwrap().flush().await.unwrap();
        drop(o);
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "out\nerr\n");
    }

    #[tokio::test]
    async fn a_logging_binary_gets_fds_3_4_5_its_args_and_env() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("logger.sh");
        crate::util::write_script(
            &script,
            "#!/bin/sh\nexec 5>&-\ncat <&3 >\"$2/out\" & cat <&4 >\"$2/err\" & wait\n\
             echo \"$CONTAINER_ID $CONTAINER_NAMESPACE $1 $3\" >\"$2/env\"\n",
        );
        let uri = format!(
            "binary://{}?dir={}&x",
            script.display(),
            dir.path().display()
        );
        let mut o = open(&uri, &uri, "ctr1", "ns1").await.unwrap();
        o.stdout
            .as_mut()
            .unwrap()
            .write_all(b"hello")
            .await
            .unwrap();
        o.stderr.as_mut().unwrap().write_all(b"oops").await.unwrap();
        let logger = o.logger.take().unwrap();
        drop(o);
        finish_logger(logger).await;
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap();
        assert_eq!(read("out"), "hello");
        assert_eq!(read("err"), "oops");
        assert_eq!(read("env").trim(), "ctr1 ns1 -dir -x");
    }

    #[tokio::test]
    async fn a_logging_binary_that_cannot_start_or_dies_is_named() {
        let e = open("binary:///nonexistent/logger", "", "c", "ns")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/logger"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("dies.sh");
        crate::util::write_script(&script, "#!/bin/sh\nexit 3\n");
        let e = open(&format!("binary://{}", script.display()), "", "c", "ns")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("dies.sh") && e.contains("exited"), "{e}");
    }
}
