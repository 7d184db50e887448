//! `hull bench ctr`: `ctr run --rm IMAGE true` with hull and with runc through the same
//! containerd (medians and ratio), then the PSS of one running hull pod's host processes
//! (shim, hypervisor, helpers), with the hypervisor's guest memory shown apart.
//!
//! It drives an existing containerd through `ctr` (one with the hull runtime installed and
//! the image imported); `make bench` starts a private one. Runs alternate between the two
//! runtimes so that a change in machine load hits both alike.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;

use super::{median, pss, Pss};

/// Errors of the benchmark.
#[derive(Debug, Error)]
pub enum CtrBenchError {
    /// `ctr` could not be run.
    #[error("running ctr {args}: {source}")]
    Spawn {
        /// Its arguments.
        args: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A `ctr` command failed.
    #[error("ctr {args} failed ({status}): {stderr}")]
    Failed {
        /// Its arguments.
        args: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The running pod's processes were not found.
    #[error("pod {pod}: {what}")]
    Pod {
        /// The pod.
        pod: String,
        /// What is missing.
        what: String,
    },
}

/// What to run against.
#[derive(Debug, Clone)]
pub struct CtrBench {
    /// containerd's socket.
    pub address: PathBuf,
    /// The containerd namespace to use.
    pub namespace: String,
    /// The image (already imported).
    pub image: String,
    /// Runs per runtime.
    pub runs: usize,
    /// hull's runtime name.
    pub runtime: String,
    /// The reference runtime.
    pub reference: String,
    /// hull's state root (where the pod's `pids` file is).
    pub state_root: PathBuf,
}

/// One process of a running pod.
#[derive(Debug, Clone, Serialize)]
pub struct PodProcess {
    /// Its name (`/proc/<pid>/comm`).
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// Its PSS.
    pub pss: Pss,
}

/// The results.
#[derive(Debug, Clone, Serialize)]
pub struct CtrBenchResult {
    /// Wall time of each `ctr run --rm` per runtime, ms.
    pub runs_ms: BTreeMap<String, Vec<f64>>,
    /// Median per runtime, ms.
    pub median_ms: BTreeMap<String, f64>,
    /// hull's median over the reference's.
    pub ratio: f64,
    /// The host processes of one running hull pod.
    pub pod_processes: Vec<PodProcess>,
}

impl CtrBench {
    fn ctr(&self, args: &[&str]) -> Result<Output, CtrBenchError> {
        let out = Command::new("ctr")
            .arg("-a")
            .arg(&self.address)
            .args(["-n", &self.namespace])
            .args(args)
            .output()
            .map_err(|source| CtrBenchError::Spawn {
                args: args.join(" "),
                source,
            })?;
        if !out.status.success() {
            return Err(CtrBenchError::Failed {
                args: args.join(" "),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(out)
    }

    /// Runs the benchmark; `progress` is told about each run.
    pub fn run(&self, progress: impl Fn(&str)) -> Result<CtrBenchResult, CtrBenchError> {
        let pid = std::process::id();
        let mut runs_ms: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for n in 0..self.runs {
            for runtime in [&self.runtime, &self.reference] {
                let id = format!("hull-bench-{pid}-{n}-{}", runtime.replace('.', "-"));
                let start = Instant::now();
                self.ctr(&[
                    "run",
                    "--runtime",
                    runtime,
                    "--rm",
                    &self.image,
                    &id,
                    "true",
                ])?;
                let ms = start.elapsed().as_secs_f64() * 1e3;
                progress(&format!(
                    "{runtime} run {}/{}: {ms:.0} ms",
                    n + 1,
                    self.runs
                ));
                runs_ms.entry(runtime.clone()).or_default().push(ms);
            }
        }
        let median_ms: BTreeMap<String, f64> = runs_ms
            .iter()
            .map(|(k, v)| (k.clone(), median(v)))
            .collect();
        let ratio = median_ms[&self.runtime] / median_ms[&self.reference];
        let pod_processes = self.pod_pss(&format!("hull-bench-{pid}-pss"))?;
        Ok(CtrBenchResult {
            runs_ms,
            median_ms,
            ratio,
            pod_processes,
        })
    }

    /// Starts a pod, measures its processes once it runs, removes it.
    fn pod_pss(&self, id: &str) -> Result<Vec<PodProcess>, CtrBenchError> {
        self.ctr(&[
            "run",
            "-d",
            "--runtime",
            &self.runtime,
            &self.image,
            id,
            "sleep",
            "1000",
        ])?;
        // Let boot-time allocations settle, as they would in a pod that serves.
        std::thread::sleep(Duration::from_secs(2));
        let measured = self.measure(id);
        let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        for _ in 0..100 {
            if self.ctr(&["task", "rm", id]).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.ctr(&["container", "rm", id]);
        measured
    }

    fn measure(&self, id: &str) -> Result<Vec<PodProcess>, CtrBenchError> {
        let missing = |what: String| CtrBenchError::Pod {
            pod: id.to_string(),
            what,
        };
        let needle = format!("-id {id} ");
        let shim = processes()
            .into_iter()
            .find(|(_, cmd)| cmd.contains("containerd-shim-hull-v2") && cmd.contains(&needle))
            .map(|(pid, _)| pid)
            .ok_or_else(|| missing("no containerd-shim-hull-v2 process".into()))?;
        let pids_file = self.state_root.join(id).join("pids");
        let vm: Vec<u32> = std::fs::read_to_string(&pids_file)
            .map_err(|e| missing(format!("{}: {e}", pids_file.display())))?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        std::iter::once(shim)
            .chain(vm)
            .map(|pid| {
                let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|s| s.trim().to_string())
                    .map_err(|e| missing(format!("process {pid}: {e}")))?;
                let pss = pss(pid).map_err(|e| missing(format!("smaps of {pid}: {e}")))?;
                Ok(PodProcess { name, pid, pss })
            })
            .collect()
    }
}

/// Every process's pid and command line (arguments joined by spaces, with a trailing one).
fn processes() -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(Path::new("/proc").join(e.file_name()).join("cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")))
        })
        .collect()
}

impl CtrBenchResult {
    /// The report as a Markdown table.
    pub fn table(&self, runtime: &str, reference: &str, accel: &str) -> String {
        let mut s = String::from("| runtime | median | min | max |\n|---|---|---|---|\n");
        for r in [runtime, reference] {
            let v = &self.runs_ms[r];
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(0.0, f64::max);
            s += &format!(
                "| {r} | {:.0} ms | {min:.0} ms | {max:.0} ms |\n",
                self.median_ms[r]
            );
        }
        s += &format!(
            "\nratio hull/{reference}: {:.1}x (guest accelerator: {accel})\n",
            self.ratio
        );
        s += "\n| pod process | PSS | of which guest memory (memfd) | PSS without guest memory |\n";
        s += "|---|---|---|---|\n";
        for p in &self.pod_processes {
            s += &format!(
                "| {} | {:.1} MiB | {:.1} MiB | {:.1} MiB |\n",
                p.name,
                p.pss.total_kib as f64 / 1024.0,
                p.pss.memfd_kib as f64 / 1024.0,
                p.pss.own_kib() as f64 / 1024.0
            );
        }
        s
    }
}
