//! Writes the seed corpora: `gen-seeds DIR` creates `DIR/<target>/<seed>` for every fuzz
//! target, from well-formed packets and chains (not committed binaries).

use std::path::Path;

use hull_vmm::devices::virtio::block::request::{req_type, RequestHeader};
use hull_vmm::devices::virtio::vsock::packet::op;
use hull_vmm_fuzz::{mmio_driver_init, vsock_header, Seed, REGION_SPLIT};
use vm_memory::ByteValued;

const RXQ: usize = 0;
const TXQ: usize = 1;

/// TX chains: a header alone, header + payload split, one straddling the RAM regions.
fn packet_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let mut s = Seed::new(4, false);
    let h = s.buffer(44, &vsock_header(700, 1025, 0, op::REQUEST, 4096));
    s.chain(0, &[(h, 44, false)]);
    let h = s.buffer(44, &vsock_header(700, 1025, 6, op::RW, 4096));
    let p = s.buffer(6, b"ready\n");
    s.chain(0, &[(h, 44, false), (p, 3, false), (p + 3, 3, false)]);
    out.push(("tx-request-rw", s.build()));

    let mut s = Seed::new(3, true);
    let hdr = vsock_header(700, 1025, 8, op::RW, 4096);
    let mut bytes = hdr.clone();
    bytes.extend_from_slice(b"straddle");
    let at = REGION_SPLIT - 20;
    s.write(at, &bytes);
    s.chain(0, &[(at, bytes.len() as u32, false)]);
    out.push(("tx-across-regions", s.build()));

    let mut s = Seed::new(2, false);
    let b = s.buffer(44, &[]);
    let p = s.buffer(64, &[]);
    s.chain(0, &[(b, 44, true), (p, 64, true)]);
    out.push(("rx-buffer", s.build()));
    out
}

/// Whole-device seeds: RX buffers posted, and a TX conversation with port 1025.
fn queue_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let mut s = Seed::new(3, false);
    for _ in 0..4 {
        let b = s.buffer(256, &[]);
        s.chain(RXQ, &[(b, 256, true)]);
    }
    let tx = [
        vsock_header(700, 1025, 0, op::REQUEST, 4096),
        vsock_header(700, 1025, 4, op::RW, 4096),
        vsock_header(700, 1025, 0, op::CREDIT_REQUEST, 4096),
        vsock_header(700, 1025, 0, op::SHUTDOWN, 4096),
        vsock_header(701, 9, 0, op::REQUEST, 4096),
    ];
    for (i, h) in tx.iter().enumerate() {
        let mut bytes = h.clone();
        if i == 1 {
            bytes.extend_from_slice(b"ping");
        }
        let b = s.buffer(bytes.len() as u32, &bytes);
        s.chain(TXQ, &[(b, bytes.len() as u32, false)]);
    }
    out.push(("conversation", s.build()));

    let mut s = Seed::new(4, true);
    let b = s.buffer(44, &[]);
    s.chain(RXQ, &[(b, 44, true)]);
    let h = s.buffer(44, &vsock_header(702, 1025, 0, op::REQUEST, 0));
    s.chain(TXQ, &[(h, 44, false)]);
    out.push(("no-credit", s.build()));
    out
}

/// A driver's whole initialisation of both queues, with chains in them.
fn mmio_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, event_idx) in [("init", false), ("init-event-idx", true)] {
        let regs = mmio_driver_init(event_idx);
        let mut s = Seed::new(4, false);
        let h = s.buffer(44, &vsock_header(700, 1025, 4, op::RW, 4096));
        let p = s.buffer(4, b"ping");
        s.chain(0, &[(h, 44, false), (p, 4, false)]);
        let b = s.buffer(64, &[]);
        s.chain(1, &[(b, 64, true)]);
        let mut input = vec![regs.len() as u8];
        input.extend(regs.concat());
        input.extend(s.build());
        out.push((name, input));
    }
    out
}

/// virtio-blk requests of every type: read, write, flush, GET_ID, one past the disk's end.
/// Control bit 4 set makes the disk read-only (the `ro` seeds).
fn blk_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, ro) in [("requests", false), ("requests-ro", true)] {
        let mut s = Seed::new(4, false);
        let requests = [
            (req_type::IN, 1, 512, true),
            (req_type::OUT, 2, 1024, false),
            (req_type::FLUSH, 0, 0, false),
            (req_type::GET_ID, 0, 20, true),
            (req_type::IN, 16, 512, true),
        ];
        for (type_, sector, len, writable) in requests {
            let h = s.buffer(16, RequestHeader::new(type_, sector).as_slice());
            let st = s.buffer(1, &[0xff]);
            if len == 0 {
                s.chain(0, &[(h, 16, false), (st, 1, true)]);
            } else {
                let d = s.buffer(len, &vec![0x5a; len as usize]);
                s.chain(0, &[(h, 16, false), (d, len, writable), (st, 1, true)]);
            }
        }
        let mut input = s.build();
        if ro {
            input[0] |= 0x10;
        }
        out.push((name, input));
    }
    out
}

/// virtio-net: RX buffers posted, TX frames (a small one, one split over two descriptors).
fn net_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut s = Seed::new(3, false);
    for _ in 0..2 {
        let b = s.buffer(1600, &[]);
        s.chain(RXQ, &[(b, 1600, true)]);
    }
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&[0xff; 6]); // broadcast
    frame.extend_from_slice(&[6, 0, 0xac, 0x10, 0, 2]);
    frame.extend_from_slice(&[0x08, 0x06]); // ARP
    frame.resize(12 + 60, 0);
    let f = s.buffer(frame.len() as u32, &frame);
    s.chain(TXQ, &[(f, frame.len() as u32, false)]);
    let f = s.buffer(frame.len() as u32, &frame);
    s.chain(
        TXQ,
        &[(f, 12, false), (f + 12, frame.len() as u32 - 12, false)],
    );
    vec![("frames", s.build())]
}

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "corpus".to_string());
    for (target, seeds) in [
        ("vsock_packet", packet_seeds()),
        ("vsock_queues", queue_seeds()),
        ("virtio_mmio", mmio_seeds()),
        ("virtio_blk", blk_seeds()),
        ("virtio_net", net_seeds()),
    ] {
        let d = Path::new(&dir).join(target);
        std::fs::create_dir_all(&d)?;
        for (name, bytes) in seeds {
            std::fs::write(d.join(format!("seed-{name}")), bytes)?;
        }
    }
    Ok(())
}
