//! The reaper waits for any child, so it is tested in its own test binary where no other
//! test's children can be reaped from under it.

use hull_agent::reaper::{Exit, Reaper};

#[test]
// The children are deliberately not wait()ed: reaping them is what the reaper is for.
#[allow(clippy::zombie_processes)]
fn a_registered_child_gets_its_exit_and_orphans_are_reaped() {
    let reaper = Reaper::default();
    let (rx, orphan) = {
        let held = reaper.fork_lock();
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 5"])
            .spawn()
            .unwrap();
        let orphan = std::process::Command::new("true").spawn().unwrap();
        let rx = reaper.register(&held, child.id() as i32);
        (rx, orphan)
    };
    let start = std::time::Instant::now();
    while rx.borrow().is_none() {
        reaper.reap_all();
        assert!(start.elapsed().as_secs() < 10, "child never reaped");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(
        *rx.borrow(),
        Some(Exit {
            status: 5,
            signal: 0
        })
    );
    // The unregistered child was reaped too: waiting for it now finds nothing.
    while std::path::Path::new(&format!("/proc/{}", orphan.id())).exists() {
        reaper.reap_all();
        assert!(start.elapsed().as_secs() < 10, "orphan never reaped");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
