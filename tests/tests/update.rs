//! A/B updates end to end: a host running the built image (0.1.0) follows an update
//! repository served over HTTP from this machine and
//!
//! 1. updates to 0.2.0 (slot b) and blesses it once healthy and its index verified;
//! 2. refuses, writing nothing: a tampered bundle, an expired index, a downgrade, another
//!    channel's validly signed index served as its own, an older (unexpired) index replayed
//!    after a newer one, and a validly signed bundle whose root does not fit its partition
//!    (refused before the fallback UKI is touched, and never fetched again);
//! 3. installs 0.3.0 (slot a), which never becomes healthy: its tries run out, 0.2.0 comes
//!    back by itself and the rollback is reported (and 0.3.0 not tried again);
//! 4. loses power while writing 0.4.0, comes back on 0.2.0, and then completes the update;
//! 5. has one block of 0.4.0's root (slot a, blessed) corrupted while off: dm-verity fails
//!    the read, the init sets 0.4.0 aside, 0.2.0 boots from slot b and says why, and the
//!    agent rewrites slot a with 0.4.0 from the repository;
//! 6. installs 0.5.0, whose network never comes up (a static address on the wrong subnet in
//!    its image default): healthy, but it never fetches a verified index, so it is never
//!    blessed, its tries run out and 0.4.0 comes back.
//!
//! Every step prints (and the test checks) the slot and version booted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crust_builder::sign::SigningKey;
use crust_format::phase::Phase;
use crust_tests::repo::{self, Server, now, release_to};
use crust_tests::{
    BootOptions, BuiltImage, Disk, TestVm, boot_timeout, built_image, extract, file_data_offset,
    partition,
};

/// Builds the qemu profile at `version`, with `extra` TOML appended; returns the bundle.
fn variant(work: &Path, keys: &Path, version: &str, extra: &str) -> PathBuf {
    variant_with(work, keys, version, extra, &[])
}

/// [`variant`], with `files` (name, content) written beside the profile first.
fn variant_with(
    work: &Path,
    keys: &Path,
    version: &str,
    extra: &str,
    files: &[(&str, &str)],
) -> PathBuf {
    repo::variant(work, keys, version, extra, files).join(crust_builder::build::outputs::BUNDLE)
}

/// Publishes `bundle` to the stable channel of `repo`; returns the index's issue time.
fn release(repo: &Path, bundle: &Path, key: &SigningKey, valid_for: u64, at: u64) -> u64 {
    release_to(repo, "stable", bundle, key, valid_for, at)
}

/// A validly signed bundle of `version` whose root is one block larger than the 1 GiB root
/// partitions of the test image (zeros, so it stays small on disk).
fn oversized_bundle(work: &Path, key: &SigningKey, version: &str) -> PathBuf {
    let path = work.join(format!("{version}.bundle"));
    let root = vec![0u8; (1 << 30) + 4096];
    crust_builder::bundle::write(
        &path,
        &crust_builder::bundle::Contents {
            layout: crust_format::layout::LAYOUT_VERSION,
            name: "crust",
            version,
            root_hash: crust_format::Digest::of(version.as_bytes()),
            root: &root,
            verity: &[0u8; 4096],
            uki: b"not a UKI: the bundle is refused before anyone reads it",
            sbom: b"{}",
        },
        key,
    )
    .unwrap_or_else(|e| panic!("oversized bundle: {e:#}"));
    path
}

/// Copies a channel's index and signature (the bundles they name are copied separately).
fn copy_index(from: &Path, to: &Path) {
    serve_index_as(from, "stable", to);
}

/// Serves `channel`'s index and signature from `from` as the stable channel's in `to`.
fn serve_index_as(from: &Path, channel: &str, to: &Path) {
    std::fs::create_dir_all(to.join("channels")).unwrap();
    for (src, dest) in [
        (
            format!("channels/{channel}.index.sig"),
            "channels/stable.index.sig",
        ),
        (format!("channels/{channel}.index"), "channels/stable.index"),
    ] {
        let tmp = to.join(format!("{dest}.tmp"));
        std::fs::copy(from.join(src), &tmp).unwrap();
        std::fs::rename(tmp, to.join(dest)).unwrap();
    }
}

/// Copies every bundle of `from` into `to`.
fn copy_bundles(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("bundles")).unwrap();
    for e in std::fs::read_dir(from.join("bundles")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join("bundles").join(e.file_name())).unwrap();
    }
}

/// Overwrites the 4 KiB block holding byte `offset` of the machine's disk (its qcow2
/// overlay) with a pattern, as a failing disk or an offline attacker would.
fn corrupt_block(disk: &Disk, offset: u64) {
    let block = offset / 4096 * 4096;
    crust_tests::run_ok(
        Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", &format!("write -P 0x5a {block} 4096")])
            .arg(&disk.overlay),
    );
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
    // 0.2.5 does not fit the disk; 0.5.0 cannot reach its repository (its image default,
    // the only source of user-data it reads, puts eth0 on another subnet).
    let v25 = oversized_bundle(work.path(), &key, "0.2.5");

    let repo = work.path().join("repo");
    let port = repo::free_port();
    let _server = Server::start(&repo, port);
    release(&repo, &v2, &key, 86_400, now());
    // The first index, kept to be replayed once the host has accepted newer ones.
    let first = work.path().join("first");
    copy_index(&repo, &first);
    let update_settings = format!(
        "[update]\nrepository = \"http://10.0.2.2:{port}\"\nchannel = \"stable\"\n\
         interval = 10\nhealth-timeout = 15\n"
    );
    let broken_network = format!(
        "version = 1\n[network.interfaces.eth0]\naddress = \"192.0.2.10/24\"\n{update_settings}"
    );
    let v5 = variant_with(
        work.path(),
        &keys,
        "0.5.0",
        "[config]\nsources = [\"image\"]\ndefault = \"host.toml\"\n",
        &[("host.toml", &broken_network)],
    );
    let seed = work.path().join("seed.img");
    let user_data = format!("version = 1\n{update_settings}");
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
    let tampered_at = release(&staging, &v3, &key, 86_400, now());
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
    // Issued after the last index the host accepted (so not a replay), and expired a second
    // later.
    let expired = work.path().join("expired");
    release(&expired, &v3, &key, 1, tampered_at + 1);
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
    copy_bundles(&old_repo, &repo);
    wait(&mut t, "older than 0.2.0: downgrades are refused", 60);
    // Another channel's index, validly signed, served as stable's.
    let beta = work.path().join("beta");
    release_to(&beta, "beta", &v3, &key, 86_400, now());
    copy_bundles(&beta, &repo);
    serve_index_as(&beta, "beta", &repo);
    wait(
        &mut t,
        "the repository served the beta channel's index as stable's; refused",
        60,
    );
    // The first index again: signed, unexpired, and older than what the host accepted.
    copy_index(&first, &repo);
    wait(&mut t, "refused (an old index replayed)", 60);
    // A validly signed 0.2.5 whose root is larger than the root partitions.
    std::fs::remove_file(repo.join("channels/stable.index")).unwrap();
    release(&repo, &v2, &key, 86_400, now());
    release(&repo, &v25, &key, 86_400, now());
    let refused = wait(&mut t, "bundle 0.2.5: its root part is", 120);
    assert!(
        refused.contains("refused, nothing written (not tried again)"),
        "{refused}"
    );
    wait(
        &mut t,
        "nothing to install: the channel's newest, 0.2.5, rolled back or was refused",
        60,
    );
    let history = t.vm.console().history().to_vec();
    assert_eq!(
        history
            .iter()
            .filter(|l| l.contains("update: found 0.2.5"))
            .count(),
        1,
        "a refused release was fetched again"
    );
    assert!(
        !history.iter().any(|l| l.contains("update: writing 0.3.0")
            || l.contains("update: writing 0.1.0")
            || l.contains("update: writing 0.2.5")
            || l.contains("removed crust_")),
        "a refused update was written, or the fallback touched"
    );

    // 3. 0.3.0 never becomes healthy and rolls back to 0.2.0. (The UKI of 0.1.0, the
    // fallback through every refusal above, is still there to be replaced.)
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
        "nothing to install: the channel's newest, 0.3.0, rolled back or was refused",
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
    drop(t);

    // 5. One block of crun in 0.4.0's root (slot a) changed while the host is off: the
    // first container start reads it, dm-verity refuses it, and 0.2.0 (slot b) takes over.
    let v4_image = v4.with_file_name(crust_builder::build::outputs::IMAGE);
    let v4_root = partition(&v4_image, "root-a");
    let root_file = work.path().join("v4-root.sqfs");
    extract(&v4_image, &v4_root, &root_file, None);
    // The second 4 KiB of crun's first compressed block: not the squashfs superblock in
    // block 0 (stage 1 would fail to mount the root, the other path to the same end), but
    // read by the first container start.
    let crun = file_data_offset(&root_file, "/usr/bin/crun");
    corrupt_block(
        &disk,
        partition(&img.image, "root-a").offset + crun + 4096 + 64,
    );
    let mut t = boot(&mut disk, &seed);
    let aside = wait(&mut t, "verity: 0.4.0 in slot a is corrupted", 180);
    assert!(
        aside.contains("set aside as crust_0.4.0+0.efi; rebooting into 0.2.0 in slot b"),
        "{aside}"
    );
    ready(&mut t, "0.2.0", "b");
    let said = wait(&mut t, "update: 0.4.0 in slot a was set aside", 60);
    assert!(said.contains("block"), "{said}");
    // The repository still offers 0.4.0: installing it rewrites the damaged slot.
    wait(&mut t, "update: 0.4.0 installed in slot a", 180);
    ready(&mut t, "0.4.0", "a");
    wait(
        &mut t,
        "update: 0.4.0 in slot a is healthy: blessed crust_0.4.0.efi",
        120,
    );

    // 6. 0.5.0 is healthy but cannot reach its repository: never blessed, rolled back.
    release(&repo, &v5, &key, 86_400, now());
    wait(&mut t, "update: 0.5.0 installed in slot b", 180);
    for attempt in 1..=3 {
        ready(&mut t, "0.5.0", "b");
        wait(&mut t, "cannot fetch a verified index", 120);
        wait(
            &mut t,
            "could not fetch a verified index in time: rebooting",
            120,
        );
        eprintln!("=== 0.5.0 try {attempt} failed");
    }
    ready(&mut t, "0.4.0", "a");
    wait(&mut t, "update: 0.5.0 in slot b rolled back", 60);
    assert!(
        !t.vm
            .console()
            .history()
            .iter()
            .any(|l| l.contains("0.5.0 in slot b is healthy: blessed")),
        "a version that cannot update was blessed"
    );
    t.power_off();
}
