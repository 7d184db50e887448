//! Differential conformance against runc (issue 4): a corpus of OCI bundles built from a
//! busybox rootfs, each run under Debian's runc 1.1.5 (the reference) and under hull-agent in
//! host mode. stdout and the exit status must match exactly; most cases also print selected
//! `/proc/self/status` fields, so those are compared too. Every difference that is right is
//! listed in [`DIFFERENCES`] with what hull must produce instead and why; anything else fails.
//! Needs root (namespaces, cgroups) and runc.
//!
//! Also here: 100 MiB through stdout intact, with the throughput printed.

mod support;

use std::sync::Arc;
use std::time::Instant;

use support::conformance::{runc_cgroup, Runc};
use support::corpus::{corpus, judge, print_report, run_all, Difference, DIFFERENCES};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_corpus_behaves_like_runc() {
    let agent = Arc::new(HostAgent::start().await);
    let runc = Arc::new(Runc::new());
    let host_dir = tempfile::tempdir().unwrap();
    std::fs::write(host_dir.path().join("file"), "from-the-host\n").unwrap();
    let cases = corpus(host_dir.path());
    assert!(
        cases.len() >= 30,
        "the corpus must have at least 30 bundles"
    );
    let started = Instant::now();
    // Four cases at a time; each runs under runc, then under hull.
    let results = run_all(agent.clone(), runc.clone(), cases, "cf", 4).await;
    let elapsed = started.elapsed();

    let diffs: Vec<&Difference> = DIFFERENCES.iter().collect();
    let (table, failures) = judge(&results, &diffs);
    for (_, id, ..) in &results {
        assert_eq!(
            support::leftover_cgroups(id),
            Vec::<std::path::PathBuf>::new(),
            "{id}: hull cgroup left"
        );
        for ctl in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let p = ctl.path().join(runc_cgroup(id).trim_start_matches('/'));
            assert!(!p.exists(), "runc left {}", p.display());
        }
    }
    print_report(&results, &diffs, "host mode", elapsed, &table);

    // Nothing left behind by either runtime.
    assert_eq!(runc.leftovers(), "", "runc still lists containers");
    assert_eq!(
        agent.leftover_processes(),
        Vec::<u32>::new(),
        "container processes left"
    );
    let bundles: Vec<_> = std::fs::read_dir(agent.dir.path().join("state/bundles"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        bundles.is_empty(),
        "bundles left in the agent's state dir: {bundles:?}"
    );
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
