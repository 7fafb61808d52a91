//! Container images for the service tests, made and served by real tools: a registry
//! (Debian's `docker-registry`, the CNCF distribution server) on 127.0.0.1, OCI image layouts
//! written by `umoci`, copied into the registry by `skopeo`. Nothing here uses the
//! builder's own OCI reader, so the tests check it against what these tools make.
//!
//! The image is a busybox: the `busybox-static` binary from the package cache (the package
//! the qemu profile's lock pins for its demo service), unpacked with `dpkg-deb`.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::run_ok;

/// What the test image runs, with its configuration's `GREETING` and `SOURCE`: one line
/// naming where it came from, a line when SIGTERM arrives, and nothing else.
pub const IMAGE_SCRIPT: &str = "trap 'echo \"$SOURCE: SIGTERM received\"; exit 0' TERM; \
    echo \"$GREETING from $SOURCE\"; while :; do /bin/busybox sleep 1; done";

/// A `docker-registry` serving plain HTTP on 127.0.0.1, stopped when dropped.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    /// Its port on 127.0.0.1 (the guest reaches it as 10.0.2.2:`port`).
    pub port: u16,
    _storage: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry with its own storage; waits until its API answers.
    pub fn start() -> Self {
        let storage = tempfile::tempdir().expect("registry storage");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let config = storage.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                storage.path().join("data").display()
            ),
        )
        .expect("registry config");
        // Its request log (404s for blobs a push checks first are normal) stays out of the
        // test's output.
        let log = std::fs::File::create(storage.path().join("registry.log")).expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot run docker-registry (cargo xtask test installs it)");
        let registry = Self {
            child,
            port,
            _storage: storage,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry does not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        registry
    }

    /// `127.0.0.1:PORT/name:tag`, as the host names it.
    pub fn reference(&self, name_tag: &str) -> String {
        format!("127.0.0.1:{}/{name_tag}", self.port)
    }

    /// Copies image `tag` of `layout` into the registry as `name_tag`; returns the
    /// manifest digest the registry now serves for it, as `skopeo inspect` reports it.
    pub fn push(&self, layout: &Path, tag: &str, name_tag: &str) -> String {
        let target = format!("docker://{}", self.reference(name_tag));
        run_ok(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--dest-tls-verify=false"])
                .arg(format!("oci:{}:{tag}", layout.display()))
                .arg(&target),
        );
        let out = run_ok(Command::new("skopeo").args([
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            &target,
        ]));
        String::from_utf8(out.stdout)
            .expect("UTF-8")
            .trim()
            .to_owned()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `busybox` binary of the busybox-static package the qemu lock pins (from the cache).
pub fn busybox(dir: &Path) -> PathBuf {
    let lock = crust_builder::lock::Lock::read(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/qemu.lock"),
    )
    .expect("qemu.lock")
    .expect("qemu.lock exists");
    let package = lock
        .packages
        .iter()
        .find(|p| p.name == "busybox-static")
        .expect("the qemu lock pins busybox-static");
    let cache = crust_builder::fetch::Cache::new(crust_builder::fetch::Cache::default_root());
    let deb = cache.deb_path(&package.digest().expect("digest"));
    assert!(
        deb.is_file(),
        "{} is not cached: build the qemu image first",
        deb.display()
    );
    let unpacked = dir.join("busybox-static");
    run_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked));
    unpacked.join("bin/busybox")
}

/// Makes an OCI image layout in `dir` (as `dir/layout`) with umoci: one image, tagged
/// `tag`, holding `/bin/busybox`, whose configuration runs [`IMAGE_SCRIPT`] with `GREETING=hello` and
/// `SOURCE=image`.
pub fn busybox_layout(dir: &Path, tag: &str) -> PathBuf {
    let busybox = busybox(dir);
    let layout = dir.join("layout");
    let image = format!("{}:{tag}", layout.display());
    run_ok(
        Command::new("umoci")
            .arg("init")
            .arg("--layout")
            .arg(&layout),
    );
    run_ok(Command::new("umoci").args(["new", "--image", &image]));
    // unpack, add the file, repack: umoci 0.4.7's `insert` writes a tar without its
    // end-of-archive blocks, which tar readers (GNU tar, Go's, ours) refuse.
    let bundle = dir.join("bundle");
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&bundle),
    );
    std::fs::create_dir_all(bundle.join("rootfs/bin")).expect("rootfs/bin");
    std::fs::copy(&busybox, bundle.join("rootfs/bin/busybox")).expect("busybox");
    run_ok(
        Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&bundle),
    );
    run_ok(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.entrypoint",
        "/bin/busybox",
        "--config.entrypoint",
        "sh",
        "--config.entrypoint",
        "-c",
        "--config.cmd",
        IMAGE_SCRIPT,
        "--config.env",
        "GREETING=hello",
        "--config.env",
        "SOURCE=image",
    ]));
    run_ok(Command::new("umoci").arg("gc").arg("--layout").arg(&layout));
    layout
}
