//! What hull-vmm's x86_64 integration tests share: tiny kernels as hand-built PVH ELF
//! images, and waiting for a hull-vmm child to end and reading what it logged.
//!
//! Included by each test crate with `mod support;`; not a test of its own.

// Each test crate uses its own part of this module.
#![allow(dead_code)]

use std::io::Read;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Where every tiny kernel's one PT_LOAD segment lands (1 MiB).
pub const LOAD_ADDR: u64 = 0x10_0000;

/// Writes `bytes` into `image` at `off`.
pub fn put(image: &mut [u8], off: usize, bytes: &[u8]) {
    image[off..off + bytes.len()].copy_from_slice(bytes);
}

/// An x86_64 ELF64 executable (e_entry [`LOAD_ADDR`]) whose one PT_LOAD, with p_flags
/// `flags`, puts `segment`, stored at file offset `offset`, at [`LOAD_ADDR`] (its memory
/// size rounded up to whole pages). With `pvh_entry`, a PT_NOTE (at file offset 0x180, so
/// `offset` must lie past 0x194) holds XEN_ELFNOTE_PHYS32_ENTRY = that address.
pub fn elf(segment: &[u8], offset: usize, flags: u32, pvh_entry: Option<u32>) -> Vec<u8> {
    let mut e = vec![0u8; offset];
    let phnum: u16 = if pvh_entry.is_some() { 2 } else { 1 };
    put(&mut e, 0, &[0x7f, b'E', b'L', b'F', 2, 1, 1]);
    put(&mut e, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut e, 18, &62u16.to_le_bytes()); // EM_X86_64
    put(&mut e, 20, &1u32.to_le_bytes()); // e_version
    put(&mut e, 24, &LOAD_ADDR.to_le_bytes()); // e_entry
    put(&mut e, 32, &64u64.to_le_bytes()); // e_phoff
    put(&mut e, 52, &64u16.to_le_bytes()); // e_ehsize
    put(&mut e, 54, &56u16.to_le_bytes()); // e_phentsize
    put(&mut e, 56, &phnum.to_le_bytes());
    let size = segment.len() as u64;
    let ph = 64;
    put(&mut e, ph, &1u32.to_le_bytes()); // PT_LOAD
    put(&mut e, ph + 4, &flags.to_le_bytes());
    put(&mut e, ph + 8, &(offset as u64).to_le_bytes());
    put(&mut e, ph + 16, &LOAD_ADDR.to_le_bytes()); // p_vaddr
    put(&mut e, ph + 24, &LOAD_ADDR.to_le_bytes()); // p_paddr
    put(&mut e, ph + 32, &size.to_le_bytes()); // p_filesz
    put(
        &mut e,
        ph + 40,
        &size.next_multiple_of(0x1000).to_le_bytes(), // p_memsz
    );
    put(&mut e, ph + 48, &0x1000u64.to_le_bytes()); // p_align
    if let Some(entry) = pvh_entry {
        let ph = 64 + 56;
        put(&mut e, ph, &4u32.to_le_bytes()); // PT_NOTE
        put(&mut e, ph + 8, &0x180u64.to_le_bytes());
        put(&mut e, ph + 32, &20u64.to_le_bytes());
        put(&mut e, ph + 40, &20u64.to_le_bytes());
        put(&mut e, ph + 48, &4u64.to_le_bytes());
        put(&mut e, 0x180, &4u32.to_le_bytes()); // n_namesz
        put(&mut e, 0x184, &4u32.to_le_bytes()); // n_descsz
        put(&mut e, 0x188, &18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
        put(&mut e, 0x18c, b"Xen\0");
        put(&mut e, 0x190, &entry.to_le_bytes());
    }
    e.extend_from_slice(segment);
    e
}

/// Waits for `child` to end; after `limit`, kills it and fails the test with `what`.
pub fn wait_exit(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Everything `child` wrote to its (piped) stderr, read to the end.
pub fn stderr_of(child: &mut Child) -> String {
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr is piped")
        .read_to_string(&mut stderr)
        .unwrap();
    stderr
}
