//! A real etcd (Debian's `etcd-server`) on this machine's loopback for the fleet tests: one
//! member in a folder of its own, stopped on drop. It can be stopped and started again with
//! its data (an outage), on the same port. Guests reach it at 10.0.2.2 through QEMU's user
//! network.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::free_port;

/// A running (or stopped) etcd member.
#[derive(Debug)]
pub struct Etcd {
    child: Option<Child>,
    data: tempfile::TempDir,
    /// Its client port on 127.0.0.1.
    pub port: u16,
    peer: u16,
}

impl Etcd {
    /// Starts a fresh member and waits until it answers.
    pub fn start() -> Self {
        let mut etcd = Etcd {
            child: None,
            data: tempfile::tempdir().expect("etcd data dir"),
            port: free_port(),
            peer: free_port(),
        };
        etcd.resume();
        etcd
    }

    /// The client URL on this machine.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where its data lives.
    pub fn data_dir(&self) -> PathBuf {
        self.data.path().to_path_buf()
    }

    /// Stops it (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again with its data, on the same ports, and waits until it answers.
    pub fn resume(&mut self) {
        let client = self.url();
        // Listening on every address: QEMU's user network reaches 127.0.0.1 as 10.0.2.2.
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(self.data.path())
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("default={peer}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian's etcd-server; cargo xtask test installs it)");
        self.child = Some(child);
        for _ in 0..200 {
            if self.answers() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("etcd on port {} did not start", self.port);
    }

    fn answers(&self) -> bool {
        Command::new("etcdctl")
            .args(["--endpoints", &self.url(), "endpoint", "health"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `etcdctl get --prefix PREFIX`, keys and values on alternate lines.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = Command::new("etcdctl")
            .args(["--endpoints", &self.url(), "get", "--prefix", prefix])
            .output()
            .expect("etcdctl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .chunks(2)
            .filter_map(|kv| Some((kv.first()?.to_string(), kv.get(1)?.to_string())))
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
