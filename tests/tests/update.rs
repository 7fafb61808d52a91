//! A/B updates end to end: a host running the built image (0.1.0) follows an update
//! repository served over HTTP from this machine and
//!
//! 1. updates to 0.2.0 (slot b) and blesses it once healthy;
//! 2. refuses a tampered bundle, an expired index and a downgrade, writing nothing;
//! 3. installs 0.3.0 (slot a), which never becomes healthy: its tries run out, 0.2.0 comes
//!    back by itself and the rollback is reported (and 0.3.0 not tried again);
//! 4. loses power while writing 0.4.0, comes back on 0.2.0, and then completes the update.
//!
//! Every step prints (and the test checks) the slot and version booted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crust_builder::build::{BuildRequest, build};
use crust_builder::fetch::Cache;
use crust_builder::repo::{Publish, publish};
use crust_builder::sign::SigningKey;
use crust_format::phase::Phase;
use crust_tests::{BootOptions, BuiltImage, Disk, TestVm, boot_timeout, built_image, init_binary};

/// Builds the qemu profile at `version`, with `extra` TOML appended; returns the bundle.
fn variant(work: &Path, keys: &Path, version: &str, extra: &str) -> PathBuf {
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
    std::fs::copy(profiles.join("qemu.lock"), dir.join("variant.lock")).unwrap();
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
        init_crates: Some(crust_tests::init_crates()),
    })
    .unwrap_or_else(|e| panic!("building {version}: {e:#}"));
    out.join(crust_builder::build::outputs::BUNDLE)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Publishes `bundle` to the stable channel of `repo`.
fn release(repo: &Path, bundle: &Path, key: &SigningKey, valid_for: u64, at: u64) {
    publish(
        &Publish {
            repo,
            bundle,
            channel: "stable",
            valid_for,
            allow_downgrade: false,
            now: at,
            built_with: None,
        },
        key,
    )
    .unwrap_or_else(|e| panic!("publish: {e:#}"));
}

/// A real HTTP server (Python's) serving `dir` on 127.0.0.1:`port`, stopped on drop.
struct Server(Child);

impl Server {
    fn start(dir: &Path, port: u16) -> Self {
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

/// Copies a channel's index and signature (the bundles they name are copied separately).
fn copy_index(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("channels")).unwrap();
    for f in ["channels/stable.index.sig", "channels/stable.index"] {
        let tmp = to.join(format!("{f}.tmp"));
        std::fs::copy(from.join(f), &tmp).unwrap();
        std::fs::rename(tmp, to.join(f)).unwrap();
    }
}

fn wait(t: &mut TestVm, text: &str, secs: u64) -> String {
    t.vm.wait_for_text(text, Duration::from_secs(secs))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Waits for the next `ready` line and checks the version and slot it reports.
fn ready(t: &mut TestVm, version: &str, slot: &str) {
    let timeout = boot_timeout(t.accel);
    let line =
        t.vm.wait_for_phase(Phase::Ready, timeout)
            .unwrap_or_else(|e| panic!("{e}"));
    let want = format!("crust {version}, slot {slot},");
    assert!(
        line.detail.contains(&want),
        "expected {want:?}, booted: {}",
        line.detail
    );
    eprintln!("=== booted {version} in slot {slot}");
}

fn boot(disk: &mut Disk, seed: &Path) -> TestVm {
    let seed = seed.to_path_buf();
    let opts = BootOptions {
        no_reboot: false,
        ..BootOptions::default()
    };
    disk.boot_with(opts, move |c| {
        c.extra_drives.push(seed);
        // A slow disk (8 MB/s of writes), so the power cut below lands inside the write.
        c.write_limit = Some(8 << 20);
    })
}

#[test]
#[ignore = "builds three versions and boots them in QEMU; run through `cargo xtask test`"]
fn updates_roll_forward_refuse_bad_input_roll_back_and_survive_power_loss() {
    let img: BuiltImage = built_image();
    let work = tempfile::tempdir().unwrap();
    let keys = img.dir.parent().unwrap().join("keys");
    let key = SigningKey::development(&keys).unwrap();
    let v2 = variant(work.path(), &keys, "0.2.0", "");
    // 0.3.0 carries a service whose health check never passes.
    let v3 = variant(
        work.path(),
        &keys,
        "0.3.0",
        "[[service]]\nname = \"broken\"\nimage.debian = [\"busybox-static\"]\n\
         command = [\"/bin/busybox\", \"sleep\", \"3600\"]\nhealth = { tcp = 9, interval = 1 }\n",
    );
    let v4 = variant(work.path(), &keys, "0.4.0", "");

    let repo = work.path().join("repo");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = Server::start(
        &{
            std::fs::create_dir_all(&repo).unwrap();
            repo.clone()
        },
        port,
    );
    release(&repo, &v2, &key, 86_400, now());
    let seed = work.path().join("seed.img");
    let user_data = format!(
        "version = 1\n[update]\nrepository = \"http://10.0.2.2:{port}\"\nchannel = \"stable\"\n\
         interval = 10\nhealth-timeout = 15\n"
    );
    crust_vm::seed::write(user_data.as_bytes(), &seed).unwrap();

    let mut disk = Disk::new(&img);
    let mut t = boot(&mut disk, &seed);

    // 1. 0.1.0 -> 0.2.0.
    ready(&mut t, "0.1.0", "a");
    wait(&mut t, "update: found 0.2.0", 120);
    let installed = wait(&mut t, "update: 0.2.0 installed in slot b", 180);
    assert!(installed.contains("crust_0.2.0+3.efi"), "{installed}");
    ready(&mut t, "0.2.0", "b");
    wait(
        &mut t,
        "update: 0.2.0 in slot b is healthy: blessed crust_0.2.0.efi",
        120,
    );

    // 2. Refusals, nothing written. Each is staged in another folder and copied in, so the
    // host never sees a good 0.3.0 in between. A tampered bundle:
    let staging = work.path().join("staging");
    release(&staging, &v3, &key, 86_400, now());
    let index = std::fs::read_to_string(staging.join("channels/stable.index")).unwrap();
    let sha = index
        .lines()
        .find(|l| l.starts_with("release=0.3.0 "))
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .to_owned();
    let name = format!("bundles/{sha}.bundle");
    let mut bad = std::fs::read(staging.join(&name)).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    std::fs::write(repo.join(&name), &bad).unwrap();
    copy_index(&staging, &repo);
    let refused = wait(&mut t, "does not match the signed index", 60);
    assert!(refused.contains("nothing written"), "{refused}");
    // An expired index (signed with an expiry in the past), over the good bundle:
    std::fs::remove_file(repo.join(&name)).unwrap();
    std::fs::copy(staging.join(&name), repo.join(&name)).unwrap();
    let expired = work.path().join("expired");
    release(&expired, &v3, &key, 60, now() - 3600);
    copy_index(&expired, &repo);
    wait(&mut t, "index expired", 60);
    // A downgrade: a channel offering only 0.1.0.
    let old_repo = work.path().join("old");
    release(
        &old_repo,
        &img.dir.join("update.bundle"),
        &key,
        86_400,
        now(),
    );
    copy_index(&old_repo, &repo);
    for e in std::fs::read_dir(old_repo.join("bundles")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), repo.join("bundles").join(e.file_name())).unwrap();
    }
    wait(&mut t, "older than 0.2.0: downgrades are refused", 60);
    assert!(
        !t.vm
            .console()
            .history()
            .iter()
            .any(|l| l.contains("update: writing 0.3.0") || l.contains("update: writing 0.1.0")),
        "a refused update was written"
    );

    // 3. 0.3.0 never becomes healthy and rolls back to 0.2.0.
    std::fs::remove_file(repo.join("channels/stable.index")).unwrap();
    release(&repo, &v2, &key, 86_400, now());
    release(&repo, &v3, &key, 86_400, now());
    let installed = wait(&mut t, "update: 0.3.0 installed in slot a", 180);
    assert!(installed.contains("removed crust_0.1.0.efi"), "{installed}");
    for attempt in 1..=3 {
        ready(&mut t, "0.3.0", "a");
        wait(&mut t, "did not become healthy in time: rebooting", 120);
        eprintln!("=== 0.3.0 try {attempt} failed");
    }
    ready(&mut t, "0.2.0", "b");
    wait(&mut t, "update: 0.3.0 in slot a rolled back", 60);
    wait(
        &mut t,
        "up to date (0.2.0; the channel's newest is 0.3.0)",
        60,
    );

    // 4. Power lost while 0.4.0 is written: the old slot boots, the update completes.
    release(&repo, &v4, &key, 86_400, now());
    wait(&mut t, "update: writing 0.4.0 into slot a", 120);
    t.vm.kill();
    drop(t);
    let mut t = boot(&mut disk, &seed);
    ready(&mut t, "0.2.0", "b");
    wait(&mut t, "update: 0.4.0 installed in slot a", 180);
    ready(&mut t, "0.4.0", "a");
    wait(
        &mut t,
        "update: 0.4.0 in slot a is healthy: blessed crust_0.4.0.efi",
        120,
    );
    t.power_off();
}
