//! `hull bench`: measurements for people, not tests (nothing here asserts a target).
//!
//! Every figure is measured on the machine it runs on, next to its reference in the same
//! run (runc for `ctr run`); the report says which accelerator the guest used, because a
//! TCG figure is not a KVM one.

pub mod ctr;

use std::path::Path;

use serde::Serialize;

/// Proportional set size of one process, split into guest memory and the rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pss {
    /// All of it, KiB.
    pub total_kib: u64,
    /// The part in shared-memory (memfd) mappings: for a VMM, the guest RAM it touched.
    pub memfd_kib: u64,
}

impl Pss {
    /// PSS outside memfd mappings: the process's own footprint.
    pub fn own_kib(&self) -> u64 {
        self.total_kib.saturating_sub(self.memfd_kib)
    }
}

/// Reads the PSS of `pid` from `/proc/<pid>/smaps`.
pub fn pss(pid: u32) -> std::io::Result<Pss> {
    let text = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("smaps"))?;
    Ok(parse_smaps(&text))
}

/// Sums `Pss:` lines of an smaps file, and separately those of `/memfd:` mappings.
pub fn parse_smaps(text: &str) -> Pss {
    let mut pss = Pss::default();
    let mut in_memfd = false;
    for line in text.lines() {
        if let Some(kib) = line
            .strip_prefix("Pss:")
            .and_then(|r| r.trim().strip_suffix("kB"))
            .and_then(|n| n.trim().parse::<u64>().ok())
        {
            pss.total_kib += kib;
            if in_memfd {
                pss.memfd_kib += kib;
            }
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            // A mapping header: "start-end perms offset dev inode [path]".
            in_memfd = line
                .split_whitespace()
                .nth(5)
                .is_some_and(|p| p.starts_with("/memfd:"));
        }
    }
    pss
}

/// Median of a non-empty list.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_pss_is_split_into_memfd_and_the_rest() {
        let smaps = "\
55d0c0000000-55d0c0100000 r-xp 00000000 fd:01 1234 /usr/bin/qemu-system-x86_64
Size:               1024 kB
Pss:                 300 kB
Pss_Dirty:            10 kB
7f0000000000-7f0010000000 rw-s 00000000 00:01 5678 /memfd:mem (deleted)
Size:             262144 kB
Pss:              120000 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
Pss:                  12 kB
";
        let p = parse_smaps(smaps);
        assert_eq!(
            p,
            Pss {
                total_kib: 120_312,
                memfd_kib: 120_000
            }
        );
        assert_eq!(p.own_kib(), 312);
    }

    #[test]
    fn pss_of_this_process_is_positive() {
        let p = pss(std::process::id()).unwrap();
        assert!(p.total_kib > 0 && p.memfd_kib == 0, "{p:?}");
    }

    #[test]
    fn median_of_odd_and_even_lists() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
