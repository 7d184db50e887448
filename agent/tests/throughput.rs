//! 100 MiB through a container's stdout, host mode (issue 4): every byte arrives intact
//! (checksummed inside the container and on the host), and the throughput is printed as a
//! figure for the closing note (not asserted: it depends on the machine). Needs root.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use hull_protocol::agent::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIZE: u64 = 100 * 1024 * 1024;

fn req(id: &str) -> ContainerRequest {
    ContainerRequest {
        container_id: id.into(),
        ..Default::default()
    }
}

/// Runs `script` in a container and streams its stdout through the host's `sha256sum`.
/// Returns (stdout length, stdout sha256, stderr, exit status, time from start to the last
/// byte of stdout).
async fn run(agent: &HostAgent, id: &str, script: &str) -> (u64, String, String, i32, Duration) {
    let rootfs = agent.rootfs(id);
    let out = agent.stream(&format!("{id}-out")).await;
    let err = agent.stream(&format!("{id}-err")).await;
    agent
        .client
        .create_container(
            ctx(),
            &CreateContainerRequest {
                container_id: id.into(),
                spec_json: spec_json(&spec(&["sh", "-c", script])),
                rootfs,
                stdio: stdio("", &format!("{id}-out"), &format!("{id}-err")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut hasher = tokio::process::Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils) on the host");
    let mut hash_in = hasher.stdin.take().unwrap();
    let start = Instant::now();
    agent.client.start_container(ctx(), &req(id)).await.unwrap();
    let pump = async {
        let mut out = out;
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = out.read(&mut buf).await.unwrap();
            if k == 0 {
                break;
            }
            n += k as u64;
            hash_in.write_all(&buf[..k]).await.unwrap();
        }
        drop(hash_in);
        (n, start.elapsed())
    };
    let wait = ProcessRequest {
        container_id: id.into(),
        ..Default::default()
    };
    let ((n, elapsed), e, w) =
        tokio::join!(pump, read_all(err), agent.client.wait_process(ctx(), &wait));
    let hashed = hasher.wait_with_output().await.unwrap();
    let sum = String::from_utf8(hashed.stdout).unwrap();
    let sum = sum
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    agent
        .client
        .remove_container(ctx(), &req(id))
        .await
        .unwrap();
    assert_eq!(leftover_cgroups(id), Vec::<std::path::PathBuf>::new());
    (
        n,
        sum,
        String::from_utf8(e).unwrap(),
        w.unwrap().exit_status,
        elapsed,
    )
}

fn mib_s(n: u64, t: Duration) -> f64 {
    n as f64 / (1024.0 * 1024.0) / t.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_mib_of_stdout_arrive_intact() {
    let agent = HostAgent::start().await;
    let tag = std::process::id();

    // Random bytes, hashed inside the container on their way out (tee into a fifo read by
    // busybox sha256sum, whose sum goes to stderr): the host's hash must be the same.
    let id = format!("tp{tag}-random");
    let script = format!(
        "mkfifo /dev/shm/f && (sha256sum < /dev/shm/f > /dev/shm/sum &) && \
         head -c {SIZE} /dev/urandom | tee /dev/shm/f; \
         while ! [ -s /dev/shm/sum ]; do sleep 0.05; done; cut -d' ' -f1 /dev/shm/sum >&2"
    );
    let (n, host_sum, inner_sum, status, t) = run(&agent, &id, &script).await;
    assert_eq!(status, 0, "stderr: {inner_sum}");
    assert_eq!(n, SIZE, "stdout length");
    assert_eq!(host_sum.len(), 64, "host sha256sum: {host_sum:?}");
    assert_eq!(
        host_sum,
        inner_sum.trim(),
        "stdout differs from what left the container"
    );
    println!(
        "100 MiB random stdout, checksummed in the container and on the host: {:.0} MiB/s ({t:.2?})",
        mib_s(n, t)
    );

    // A known pattern written in 1 MiB blocks with nothing else running in the container:
    // closer to the stream's own throughput. The host's checksum must be that of 100 MiB of zeros.
    let id = format!("tp{tag}-zeros");
    let (n, host_sum, _, status, t) = run(
        &agent,
        &id,
        &format!(
            "dd if=/dev/zero bs=1048576 count={} 2>/dev/null",
            SIZE >> 20
        ),
    )
    .await;
    assert_eq!((status, n), (0, SIZE));
    let zeros = std::process::Command::new("sh")
        .args(["-c", &format!("head -c {SIZE} /dev/zero | sha256sum")])
        .output()
        .unwrap();
    let want = String::from_utf8(zeros.stdout).unwrap();
    assert_eq!(host_sum, want.split_whitespace().next().unwrap());
    println!(
        "100 MiB of zeros through stdout, host mode: {:.0} MiB/s ({t:.2?})",
        mib_s(n, t)
    );

    assert!(agent.leftover_processes().is_empty());
}
