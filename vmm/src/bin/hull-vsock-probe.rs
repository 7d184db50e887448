//! `hull-vsock-probe UDS [TIMEOUT_S]`: the host end of the nested harness's vsock check.
//!
//! Listens on `UDS_1025` (the agent's readiness port), waits for the guest's
//! `HULL-AGENT-READY <version>` line, then connects to `UDS`, sends `CONNECT 1024` and
//! expects an `OK ` line, and finally makes one ttrpc `hull.agent.v1.Agent/Check` call over
//! that stream (request and reply framed by hand: this binary stays std-only and static).
//! Prints one line, `HULL-VSOCK-PROBE: ok ready="…" ready_ms=… connect_ms=… check_ms=…`,
//! or `HULL-VSOCK-PROBE: FAIL <why>`; exits 0 or 1. Every step has a deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(uds) = args.next() else {
        eprintln!("usage: hull-vsock-probe UDS [TIMEOUT_S]");
        return ExitCode::from(2);
    };
    let timeout = Duration::from_secs(args.next().and_then(|t| t.parse().ok()).unwrap_or(30));
    match probe(&uds, timeout) {
        Ok(line) => {
            println!("HULL-VSOCK-PROBE: ok {line}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("HULL-VSOCK-PROBE: FAIL {why}");
            ExitCode::FAILURE
        }
    }
}

fn probe(uds: &str, timeout: Duration) -> Result<String, String> {
    let start = Instant::now();
    let ready_path = format!("{uds}_1025");
    let _ = std::fs::remove_file(&ready_path);
    let listener =
        UnixListener::bind(&ready_path).map_err(|e| format!("bind {ready_path}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("nonblocking: {e}"))?;
    // Tell the harness we listen (it starts hull-vmm after this line).
    println!("HULL-VSOCK-PROBE: listening {ready_path}");
    let conn = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if start.elapsed() > timeout {
                    return Err(format!("no readiness connection within {timeout:?}"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    };
    let ready = read_line(conn, timeout)?;
    if !ready.starts_with("HULL-AGENT-READY ") {
        return Err(format!("unexpected readiness line {ready:?}"));
    }
    let ready_ms = start.elapsed().as_millis();

    let t = Instant::now();
    let mut s = UnixStream::connect(uds).map_err(|e| format!("connect {uds}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(b"CONNECT 1024\n")
        .map_err(|e| format!("CONNECT: {e}"))?;
    let ok = read_line(s.try_clone().map_err(|e| e.to_string())?, timeout)?;
    if !ok.starts_with("OK ") {
        return Err(format!("CONNECT 1024 answered {ok:?}"));
    }
    let connect_ms = t.elapsed().as_millis();

    let t = Instant::now();
    let status = ttrpc_check(&mut s)?;
    if status != 1 {
        return Err(format!("Check answered status {status} (want SERVING = 1)"));
    }
    let check_us = t.elapsed().as_micros();
    Ok(format!(
        "ready={ready:?} ready_ms={ready_ms} connect_ms={connect_ms} reply={ok:?} check=SERVING check_us={check_us}"
    ))
}

/// Reads one line byte by byte (nothing after it is consumed), without the newline.
fn read_line(s: UnixStream, timeout: Duration) -> Result<String, String> {
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    let mut r = BufReader::with_capacity(1, s);
    r.read_until(b'\n', &mut line)
        .map_err(|e| format!("reading a line: {e}"))?;
    if line.pop() != Some(b'\n') || line.len() > 128 {
        return Err(format!(
            "no complete line: {:?}",
            String::from_utf8_lossy(&line)
        ));
    }
    String::from_utf8(line).map_err(|_| "line is not UTF-8".into())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, data: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// Protobuf fields of `buf`: (field, varint value or 0, bytes or empty). Only the wire types
/// ttrpc's Response uses (varint, length-delimited).
fn fields(mut buf: &[u8]) -> Result<Vec<(u64, u64, Vec<u8>)>, String> {
    fn varint(buf: &mut &[u8]) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = buf.split_first().ok_or("truncated varint")?;
            *buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        match key & 7 {
            0 => out.push((key >> 3, varint(&mut buf)?, Vec::new())),
            2 => {
                let len = usize::try_from(varint(&mut buf)?).map_err(|e| e.to_string())?;
                if len > buf.len() {
                    return Err("truncated field".into());
                }
                out.push((key >> 3, 0, buf[..len].to_vec()));
                buf = &buf[len..];
            }
            w => return Err(format!("unexpected wire type {w}")),
        }
    }
    Ok(out)
}

/// One ttrpc unary call `hull.agent.v1.Agent/Check`; returns CheckResponse.status.
fn ttrpc_check(s: &mut UnixStream) -> Result<u64, String> {
    let mut req = Vec::new();
    put_bytes(&mut req, 1, b"hull.agent.v1.Agent");
    put_bytes(&mut req, 2, b"Check");
    put_bytes(&mut req, 3, b"");
    put_varint(&mut req, 4 << 3);
    put_varint(&mut req, 5_000_000_000); // timeout_nano
                                         // Frame: length, stream id (odd: client), type 1 = request, flags.
    let mut frame = Vec::with_capacity(10 + req.len());
    frame.extend_from_slice(&(req.len() as u32).to_be_bytes());
    frame.extend_from_slice(&1u32.to_be_bytes());
    frame.extend_from_slice(&[1, 0]);
    frame.extend_from_slice(&req);
    s.write_all(&frame)
        .map_err(|e| format!("ttrpc write: {e}"))?;
    let mut hdr = [0u8; 10];
    s.read_exact(&mut hdr)
        .map_err(|e| format!("ttrpc reply header: {e}"))?;
    let len = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
    if hdr[8] != 2 || len > 4096 {
        return Err(format!("ttrpc reply type {} length {len}", hdr[8]));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)
        .map_err(|e| format!("ttrpc reply body: {e}"))?;
    let mut payload = None;
    for (field, _, bytes) in fields(&body)? {
        match field {
            // Status: present with a non-zero code on errors.
            1 => {
                for (f, code, msg) in fields(&bytes)? {
                    if f == 1 && code != 0 {
                        return Err(format!("ttrpc status {code}"));
                    }
                    if f == 2 {
                        return Err(format!("ttrpc error {:?}", String::from_utf8_lossy(&msg)));
                    }
                }
            }
            2 => payload = Some(bytes),
            _ => {}
        }
    }
    let payload = payload.unwrap_or_default();
    Ok(fields(&payload)?
        .into_iter()
        .find(|f| f.0 == 1)
        .map_or(0, |f| f.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_round_trip() {
        let mut b = Vec::new();
        put_bytes(&mut b, 2, &[0x08, 0x01]);
        put_varint(&mut b, 1 << 3);
        put_varint(&mut b, 300);
        let f = fields(&b).unwrap();
        assert_eq!(f[0], (2, 0, vec![0x08, 0x01]));
        assert_eq!(f[1], (1, 300, vec![]));
        assert!(fields(&[0x12, 0x05, 0x00]).is_err());
        assert!(fields(&[0x0b]).is_err());
    }
}
