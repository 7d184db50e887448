//! The control socket's wire format: one JSON object per line each way.
//!
//! Request: `{"cmd":"<command>"}` + `\n`, commands `pause`, `resume`, `shutdown`, `state`,
//! `metrics` (no other fields). A line is at most [`MAX_REQUEST`] bytes including its `\n`;
//! a trailing `\r` is ignored; a longer line gets an error reply and the connection is
//! closed (the client may see a reset, as the rest of its line is never read). Reply, one line per request, in order:
//!
//! - success: `{"ok":true}` plus the command's fields: `state` adds `"state"`
//!   (`running`, `pausing` = a pause timed out and some vCPU has not parked yet, `paused`,
//!   `stopped` = the VM is ending), `"uptime_ms"` (since hull-vmm started) and `"vcpus"`; `metrics` adds `"metrics"`
//!   ([`crate::metrics::MetricsSnapshot`]);
//! - failure: `{"ok":false,"error":"<what was wrong>"}`.
//!
//! This module only parses and formats; [`super::server`] does the I/O.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::metrics::MetricsSnapshot;

/// Longest request line accepted, including its newline.
pub const MAX_REQUEST: usize = 4096;

/// A command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// All vCPUs leave `KVM_RUN` and park.
    Pause,
    /// Parked vCPUs run again.
    Resume,
    /// End the VM; hull-vmm exits (status 0).
    Shutdown,
    /// Running or paused, and uptime.
    State,
    /// The counters.
    Metrics,
}

/// A request line's object. (serde's internally tagged enums ignore unknown fields; a
/// struct refuses them.)
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    cmd: Request,
}

/// Errors of reading a request line.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RequestError {
    /// The line exceeds [`MAX_REQUEST`] (the connection is closed after the reply).
    #[error("request longer than {MAX_REQUEST} bytes")]
    TooLong,
    /// The line is not UTF-8.
    #[error("request is not UTF-8")]
    NotUtf8,
    /// The line is empty.
    #[error("empty request: expected {{\"cmd\":\"pause|resume|shutdown|state|metrics\"}}")]
    Empty,
    /// The line is not a request object (serde's message names the problem).
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// Parses one request line (without its `\n`).
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    if line.len() >= MAX_REQUEST {
        return Err(RequestError::TooLong);
    }
    let text = std::str::from_utf8(line).map_err(|_| RequestError::NotUtf8)?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(RequestError::Empty);
    }
    // serde would also take the fields as a JSON array (`["pause"]`); the protocol is objects.
    if !text.trim_start().starts_with('{') {
        return Err(RequestError::Invalid("expected a JSON object".into()));
    }
    serde_json::from_str::<Wire>(text)
        .map(|w| w.cmd)
        .map_err(|e| RequestError::Invalid(e.to_string()))
}

/// A reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Done, nothing to report.
    Done,
    /// The VM's state.
    State {
        /// `running`, `pausing`, `paused` or `stopped`.
        state: &'static str,
        /// Milliseconds since hull-vmm started.
        uptime_ms: u64,
        /// Number of vCPUs.
        vcpus: usize,
    },
    /// The counters.
    Metrics(Box<MetricsSnapshot>),
    /// The request failed.
    Error(String),
}

#[derive(Serialize)]
struct Reply<'a> {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uptime_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vcpus: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<&'a MetricsSnapshot>,
}

impl Response {
    /// The reply line, `\n`-terminated.
    pub fn to_line(&self) -> Vec<u8> {
        let mut w = Reply {
            ok: true,
            error: None,
            state: None,
            uptime_ms: None,
            vcpus: None,
            metrics: None,
        };
        match self {
            Response::Done => {}
            Response::State {
                state,
                uptime_ms,
                vcpus,
            } => {
                w.state = Some(state);
                w.uptime_ms = Some(*uptime_ms);
                w.vcpus = Some(*vcpus);
            }
            Response::Metrics(m) => w.metrics = Some(m),
            Response::Error(e) => {
                w.ok = false;
                w.error = Some(e);
            }
        }
        // Serialising plain structs of strings and integers cannot fail.
        let mut line = serde_json::to_vec(&w)
            .unwrap_or_else(|_| br#"{"ok":false,"error":"internal: reply encoding"}"#.to_vec());
        line.push(b'\n');
        line
    }
}

/// Splits a byte stream into request lines, never holding more than [`MAX_REQUEST`] bytes.
#[derive(Debug, Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
}

impl LineBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        LineBuffer::default()
    }

    /// Appends `data`; returns the complete lines in it (without `\n`), or
    /// [`RequestError::TooLong`] once a line grows past [`MAX_REQUEST`] (lines completed
    /// before it are lost with it: the caller closes the connection).
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, RequestError> {
        let mut lines = Vec::new();
        for chunk in data.split_inclusive(|&b| b == b'\n') {
            self.buf.extend_from_slice(chunk);
            if self.buf.len() > MAX_REQUEST {
                self.buf.clear();
                return Err(RequestError::TooLong);
            }
            if self.buf.last() == Some(&b'\n') {
                self.buf.pop();
                lines.push(std::mem::take(&mut self.buf));
            }
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_parses() {
        for (line, want) in [
            (&br#"{"cmd":"pause"}"#[..], Request::Pause),
            (br#"{"cmd":"resume"}"#, Request::Resume),
            (br#"{"cmd":"shutdown"}"#, Request::Shutdown),
            (br#" { "cmd" : "state" } "#, Request::State),
            (b"{\"cmd\":\"metrics\"}\r", Request::Metrics),
        ] {
            assert_eq!(
                parse_request(line),
                Ok(want),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    /// Each malformed request is an error naming the problem, never a panic.
    #[test]
    fn malformed_requests_name_what_is_wrong() {
        let err = |line: &[u8]| parse_request(line).unwrap_err().to_string();
        assert!(err(br#"{"cmd":"paws"}"#).contains("unknown variant `paws`"));
        assert!(err(br#"{"cmd":"pause","x":1}"#).contains("unknown field `x`"));
        assert!(err(br#"{}"#).contains("missing field `cmd`"));
        assert!(err(br#"{"cmd":7}"#).contains("invalid request"));
        assert!(err(b"pause").contains("invalid request"));
        assert!(err(br#"{"cmd":"pause"} {"cmd":"resume"}"#).contains("trailing characters"));
        assert!(err(br#"["pause"]"#).contains("expected a JSON object"));
        assert_eq!(parse_request(b""), Err(RequestError::Empty));
        assert_eq!(parse_request(b" \r"), Err(RequestError::Empty));
        assert_eq!(parse_request(b"\xff\xfe"), Err(RequestError::NotUtf8));
        assert_eq!(
            parse_request(&vec![b' '; MAX_REQUEST]),
            Err(RequestError::TooLong)
        );
        // Deeply nested input is refused by serde_json's recursion limit, not a stack
        // overflow.
        let deep = format!("{}{}", "{\"cmd\":".repeat(400), "}".repeat(400));
        assert!(err(deep.as_bytes()).contains("invalid request"));
    }

    #[test]
    fn replies_are_one_json_line() {
        assert_eq!(Response::Done.to_line(), b"{\"ok\":true}\n");
        let s = Response::State {
            state: "paused",
            uptime_ms: 12,
            vcpus: 2,
        };
        assert_eq!(
            String::from_utf8(s.to_line()).unwrap(),
            "{\"ok\":true,\"state\":\"paused\",\"uptime_ms\":12,\"vcpus\":2}\n"
        );
        let e = Response::Error("quote \" and\nnewline".into()).to_line();
        assert_eq!(e.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        let v: serde_json::Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"], "quote \" and\nnewline");
        let m = crate::metrics::Metrics::default().snapshot();
        let v: serde_json::Value =
            serde_json::from_slice(&Response::Metrics(Box::new(m)).to_line()).unwrap();
        assert_eq!(v["metrics"]["vcpu_exits"]["total"], 0);
    }

    #[test]
    fn lines_are_split_across_reads_and_bounded() {
        let mut b = LineBuffer::new();
        assert_eq!(b.push(b"{\"cmd\":").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(
            b.push(b"\"state\"}\n{\"cmd\":\"metrics\"}\n{").unwrap(),
            vec![
                b"{\"cmd\":\"state\"}".to_vec(),
                b"{\"cmd\":\"metrics\"}".to_vec()
            ]
        );
        assert_eq!(b.push(b"}\n").unwrap(), vec![b"{}".to_vec()]);
        // Exactly MAX_REQUEST bytes with the newline is fine; one more is not.
        let mut ok = vec![b'x'; MAX_REQUEST - 1];
        ok.push(b'\n');
        assert_eq!(b.push(&ok).unwrap().len(), 1);
        let long = vec![b'x'; MAX_REQUEST + 1];
        assert_eq!(b.push(&long[..100]).unwrap().len(), 0);
        assert_eq!(b.push(&long[100..]), Err(RequestError::TooLong));
        assert_eq!(b.push(b"\n").unwrap(), vec![Vec::<u8>::new()]);
    }
}
