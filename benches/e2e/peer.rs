//! The peer: `kubectl logs -f --timestamps`, one process per stream, following the same streams
//! as the relay in the same run (SPEC §10's ratio). Its CPU is counted the way the relay's is,
//! from the kernel's accounting: each follower exits when its stream ends, and once waited for
//! its utime + stime land exactly in this process's `cutime` + `cstime`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::procs;

/// Whether `kubectl` can be run here.
pub fn available() -> bool {
    Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Running followers.
pub struct Followers {
    children: Vec<Child>,
    children_cpu_before: f64,
    _kubeconfig: tempfile::TempDir,
}

/// What the followers cost.
pub struct PeerCost {
    /// CPU seconds of every follower together.
    pub cpu: f64,
    /// Followers that exited with an error (or had to be killed).
    pub failed: usize,
}

/// Starts `kubectl --server URL logs -f --timestamps -n NS POD -c C` for every stream (over
/// TLS: `--kubeconfig` the simulator's, which names its CA), its output discarded (as a pipe to
/// a consumer would be drained).
///
/// Call it while no other child of this process exits: the cost is the growth of this
/// process's children's CPU until [`Followers::wait`] reaped them all.
pub fn follow(
    server: &str,
    kubeconfig: Option<&Path>,
    streams: &[(String, String, String)],
) -> Followers {
    let (_, children_cpu_before) = procs::own_cpu_seconds();
    // An empty kubeconfig: kubectl must not pick up a real cluster's credentials or context.
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("config");
    std::fs::write(&empty, "apiVersion: v1\nkind: Config\n").expect("kubeconfig");
    let server_args: Vec<&str> = match kubeconfig {
        Some(_) => vec![],
        None => vec!["--server", server],
    };
    let children = streams
        .iter()
        .map(|(ns, pod, c)| {
            Command::new("kubectl")
                .env("KUBECONFIG", kubeconfig.unwrap_or(&empty))
                .args(&server_args)
                .args(["logs", "-f", "--timestamps", "-n", ns, pod])
                .args(["-c", c])
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("kubectl starts")
        })
        .collect();
    Followers {
        children,
        children_cpu_before,
        _kubeconfig: dir,
    }
}

impl Followers {
    /// Waits until every follower ended (its stream finished), killing those still running at
    /// `deadline`, and returns their CPU.
    pub async fn wait(mut self, timeout: Duration) -> PeerCost {
        let deadline = Instant::now() + timeout;
        let mut failed = 0;
        let mut running = std::mem::take(&mut self.children);
        while !running.is_empty() {
            let mut still = Vec::new();
            for mut child in running {
                match child.try_wait() {
                    Ok(Some(status)) => failed += usize::from(!status.success()),
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        failed += 1;
                    }
                    Ok(None) => still.push(child),
                    Err(_) => failed += 1,
                }
            }
            running = still;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (_, children_cpu) = procs::own_cpu_seconds();
        PeerCost {
            cpu: children_cpu - self.children_cpu_before,
            failed,
        }
    }
}

impl Drop for Followers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
