//! Stdio streams: one connection per process stream, named by the host.
//!
//! The host opens a connection to the agent's stdio port (vsock 1026; a unix socket in host
//! mode), writes `STREAM <id>\n`, and then names that id in `CreateContainer`/`ExecProcess`.
//! The agent parks arriving streams here until a request claims them. Dedicated streams
//! instead of RPC polling give full throughput and let the agent finish writing every byte
//! of output before it reports the process's exit.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use hull_protocol::MAX_STREAM_ID;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::Notify;

/// A connected stdio stream.
pub trait StreamIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> StreamIo for T {}

/// A stream, boxed so vsock and unix connections look the same.
pub type Stream = Pin<Box<dyn StreamIo>>;

/// At most this many unclaimed streams are parked; later ones are refused.
const MAX_PARKED: usize = 1024;
/// How long a new connection may take to send its header line.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors about stdio streams.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StreamError {
    /// The header line is malformed.
    #[error("bad stream header: {0}")]
    BadHeader(String),
    /// A stream with this id is already parked.
    #[error("stream {0:?} is already connected")]
    Duplicate(String),
    /// Too many streams are parked.
    #[error("too many unclaimed streams")]
    TooMany,
    /// The stream named in a request never arrived.
    #[error("stdio stream {0:?} was not connected within {1:?}")]
    Missing(String, Duration),
}

/// Checks a stream id: 1..=MAX_STREAM_ID of `[A-Za-z0-9_.:-]`.
pub fn validate_id(id: &str) -> Result<(), StreamError> {
    if id.is_empty()
        || id.len() > MAX_STREAM_ID
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
    {
        return Err(StreamError::BadHeader(format!(
            "invalid stream id {:?}",
            id.chars().take(64).collect::<String>()
        )));
    }
    Ok(())
}

/// Parses a header line (without the newline): `STREAM <id>`.
pub fn parse_header(line: &[u8]) -> Result<String, StreamError> {
    let line = std::str::from_utf8(line).map_err(|_| StreamError::BadHeader("not UTF-8".into()))?;
    let id = line.strip_prefix("STREAM ").ok_or_else(|| {
        StreamError::BadHeader(format!(
            "expected `STREAM <id>`, got {:?}",
            line.chars().take(64).collect::<String>()
        ))
    })?;
    validate_id(id)?;
    Ok(id.to_string())
}

/// Reads the header line, one byte at a time (nothing after it is consumed).
async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<String, StreamError> {
    let mut line = Vec::with_capacity(32);
    loop {
        let b = r
            .read_u8()
            .await
            .map_err(|e| StreamError::BadHeader(format!("reading the header: {e}")))?;
        if b == b'\n' {
            return parse_header(&line);
        }
        if line.len() > MAX_STREAM_ID + 8 {
            return Err(StreamError::BadHeader("header too long".into()));
        }
        line.push(b);
    }
}

/// Parked streams, by id.
#[derive(Default)]
pub struct StreamRegistry {
    parked: Mutex<HashMap<String, Stream>>,
    arrived: Notify,
}

impl std::fmt::Debug for StreamRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.parked.lock().map(|p| p.len()).unwrap_or(0);
        f.debug_struct("StreamRegistry")
            .field("parked", &n)
            .finish()
    }
}

impl StreamRegistry {
    /// Reads a new connection's header and parks it.
    pub async fn admit(&self, mut conn: Stream) -> Result<String, StreamError> {
        let id = tokio::time::timeout(HEADER_TIMEOUT, read_header(&mut conn))
            .await
            .map_err(|_| StreamError::BadHeader("no header within 5 s".into()))??;
        {
            let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
            if parked.contains_key(&id) {
                return Err(StreamError::Duplicate(id));
            }
            if parked.len() >= MAX_PARKED {
                return Err(StreamError::TooMany);
            }
            parked.insert(id.clone(), conn);
        }
        self.arrived.notify_waiters();
        Ok(id)
    }

    /// Takes the stream `id`, waiting up to `timeout` for it to arrive.
    pub async fn claim(&self, id: &str, timeout: Duration) -> Result<Stream, StreamError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            if let Some(s) = self
                .parked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id)
            {
                return Ok(s);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(StreamError::Missing(id.to_string(), timeout));
            }
        }
    }

    /// Takes the stream `id` if it is named (non-empty).
    pub async fn claim_opt(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<Stream>, StreamError> {
        if id.is_empty() {
            return Ok(None);
        }
        self.claim(id, timeout).await.map(Some)
    }

    /// Accepts connections from `accept` forever, parking each.
    pub async fn serve<F, Fut>(self: std::sync::Arc<Self>, mut accept: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::io::Result<Stream>>,
    {
        loop {
            match accept().await {
                Ok(conn) => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = me.admit(conn).await {
                            log::warn!("stdio stream refused: {e}");
                        }
                    });
                }
                Err(e) => {
                    log::warn!("accepting a stdio stream: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn headers_are_parsed_strictly() {
        assert_eq!(parse_header(b"STREAM c1-stdout"), Ok("c1-stdout".into()));
        assert!(parse_header(b"STREAM ").is_err());
        assert!(parse_header(b"STREAM a b").is_err());
        assert!(parse_header(b"stream x").is_err());
        assert!(parse_header(b"STREAM ../x").is_err());
        assert!(parse_header(b"\xffSTREAM x").is_err());
        assert!(parse_header(format!("STREAM {}", "a".repeat(129)).as_bytes()).is_err());
    }

    #[tokio::test]
    async fn a_stream_is_claimed_by_id_with_its_data_intact() {
        let reg = std::sync::Arc::new(StreamRegistry::default());
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b"STREAM s1\nhello").await.unwrap();
        let claimer = {
            let reg = reg.clone();
            tokio::spawn(async move { reg.claim("s1", Duration::from_secs(5)).await })
        };
        assert_eq!(reg.admit(Box::pin(a)).await.unwrap(), "s1");
        let mut s = claimer.await.unwrap().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
    }

    #[tokio::test]
    async fn duplicates_and_missing_streams_are_errors() {
        let reg = StreamRegistry::default();
        let (a, mut a2) = tokio::io::duplex(64);
        let (b, mut b2) = tokio::io::duplex(64);
        a2.write_all(b"STREAM d\n").await.unwrap();
        b2.write_all(b"STREAM d\n").await.unwrap();
        reg.admit(Box::pin(a)).await.unwrap();
        assert_eq!(
            reg.admit(Box::pin(b)).await.unwrap_err(),
            StreamError::Duplicate("d".into())
        );
        let e = match reg.claim("nope", Duration::from_millis(50)).await {
            Err(e) => e,
            Ok(_) => panic!("claimed a stream that never arrived"),
        };
        assert!(matches!(e, StreamError::Missing(..)));
        assert!(reg
            .claim_opt("", Duration::from_millis(1))
            .await
            .unwrap()
            .is_none());
    }
}
