//! Update repositories for the end-to-end tests: variants of the qemu profile built at
//! other versions, published with the builder's own publishing code, and served over HTTP
//! from this machine (guests reach it at 10.0.2.2 through QEMU's user network).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crust_builder::build::{BuildRequest, build};
use crust_builder::fetch::Cache;
use crust_builder::repo::{Publish, publish};
use crust_builder::sign::SigningKey;

use crate::init_binary;

/// Builds the qemu profile at `version` with `extra` TOML appended and `files` (name,
/// content) written beside the profile, signed with the development key in `keys`, into
/// `work/v<version>/out`; returns the output folder.
pub fn variant(
    work: &Path,
    keys: &Path,
    version: &str,
    extra: &str,
    files: &[(&str, &str)],
) -> PathBuf {
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    let dir = work.join(format!("v{version}"));
    std::fs::create_dir_all(dir.join("files")).unwrap();
    for f in ["base.toml", "qemu.toml"] {
        std::fs::copy(profiles.join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(
        profiles.join("files/web-start.sh"),
        dir.join("files/web-start.sh"),
    )
    .unwrap();
    // The qemu lock: services that name packages it pins reuse them (apt is not asked).
    std::fs::copy(profiles.join("qemu.lock"), dir.join("variant.lock")).unwrap();
    for (name, content) in files {
        std::fs::write(dir.join(name), content).unwrap();
    }
    std::fs::write(
        dir.join("variant.toml"),
        format!("include = \"qemu.toml\"\n[image]\nversion = \"{version}\"\n{extra}"),
    )
    .unwrap();
    let out = dir.join("out");
    build(&BuildRequest {
        profile: dir.join("variant.toml"),
        init: init_binary(),
        out_dir: out.clone(),
        dev_key_dir: keys.to_path_buf(),
        cache: Cache::new(Cache::default_root()),
        locked: false,
        source_date_epoch: None,
        init_crates: Some(crate::init_crates()),
        observe: crate::observe_program(),
        extras: Default::default(),
    })
    .unwrap_or_else(|e| panic!("building {version}: {e:#}"));
    out
}

/// Now, in Unix seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Publishes `bundle` to `channel` of `repo`, valid for `valid_for` seconds from `at`, to
/// every host at once; returns the index's issue time.
pub fn release_to(
    repo: &Path,
    channel: &str,
    bundle: &Path,
    key: &SigningKey,
    valid_for: u64,
    at: u64,
) -> u64 {
    release_rolling(repo, channel, bundle, key, valid_for, at, 0)
}

/// [`release_to`], rolling out over `rollout` seconds.
pub fn release_rolling(
    repo: &Path,
    channel: &str,
    bundle: &Path,
    key: &SigningKey,
    valid_for: u64,
    at: u64,
    rollout: u64,
) -> u64 {
    publish(
        &Publish {
            repo,
            bundle,
            channel,
            valid_for,
            allow_downgrade: false,
            rollout,
            now: at,
            built_with: None,
        },
        key,
    )
    .unwrap_or_else(|e| panic!("publish: {e:#}"))
    .index
    .issued
}

pub use crate::free_port;

/// A real HTTP server (Python's) serving `dir` on 127.0.0.1:`port`, stopped on drop.
#[derive(Debug)]
pub struct Server(Child);

impl Server {
    /// Starts serving `dir` (made if missing) and waits until it accepts connections.
    pub fn start(dir: &Path, port: u16) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
                "--directory",
            ])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 http.server");
        // Owned by the guard from here on: a failed start still reaps it.
        let server = Server(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the HTTP server did not start");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
