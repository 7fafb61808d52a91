//! The sealed `/var`, end to end: a Secure Boot image (a fresh key set, a recovery key, a
//! service that writes a marker) on a machine with a TPM 2.0 (swtpm) under OVMF's Secure
//! Boot firmware with the TPM's TCG2 support, and one disk carried through:
//!
//! 1. the first boot (on a disk larger than the image: the partition grows first) makes a key, seals it (PCR 7 and PCR 11 signed by the image's key),
//!    formats `/var` inside dm-crypt and measures the root hash and user-data into PCR 12;
//!    the marker service writes its line; the update agent installs 0.2.0 (same keys, its
//!    own signed PCR 11 policy), reboots, and 0.2.0 unseals the same key, keeps the machine
//!    id and is blessed — no re-enrolment, no re-sealing;
//! 2. offline, the marker is nowhere in the state partition's raw bytes; the owner's
//!    recovery key opens the volume key (`cargo xtask recover`'s code), and the data,
//!    decrypted by pyca/cryptography (OpenSSL's AES-XTS, not the kernel's), is an ext4 that
//!    `e2fsck` finds clean and that holds the marker;
//! 3. the same disk with another TPM, with Secure Boot off, and with its UKI re-signed by
//!    another key that db also holds: the key does not unseal, the host says why and
//!    follows 0.2.0's policy (`tmpfs`), and the state partition is byte for byte as it was;
//!    the original machine then unseals it again;
//! 4. 0.1.0 (policy `refuse`) on a machine without a TPM: one error line, a reboot.
//!
//! `cargo xtask test` passes the init (`CRUST_TEST_INIT`) and `virt-fw-vars`
//! (`CRUST_TEST_VIRT_FW_VARS`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crust_builder::build::outputs;
use crust_builder::secureboot::{Role, generate};
use crust_builder::sign::SigningKey;
use crust_format::phase::Phase;
use crust_format::sealed::{DATA_OFFSET, HeaderState, SECTOR_SIZE};
use crust_tests::repo::{self, Server, now, release_to};
use crust_tests::{BootOptions, Disk, TestVm, boot_timeout, partition, run_ok};
use crust_vm::firmware::{self, Firmware};

/// The kernel's line when the firmware started it with Secure Boot on.
const ENABLED: &str = "secureboot: Secure boot enabled";

fn env_path(var: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is not set: run the sealed tests through `cargo xtask test`")
    })
}

/// The variant's TOML after `[image]`: the key set, the state table, the image default
/// user-data (the update repository) and the marker service.
fn extra(keys: &Path, owner: &Path, marker: &str, without_tpm: &str) -> String {
    format!(
        "[secure-boot]\nkeys = \"{}\"\nenroll = \"force\"\n\n[state]\nrecovery-key = \"{}\"\n\
         without-tpm = \"{without_tpm}\"\n\n[config]\ndefault = \"host.toml\"\n\n\
         [[service]]\nname = \"marker\"\nimage.debian = [\"busybox-static\"]\n\
         command = [\"/bin/busybox\", \"echo\", \"{marker}\"]\nrestart = \"never\"\n",
        keys.display(),
        owner.display()
    )
}

fn wait(t: &mut TestVm, text: &str) -> String {
    let bound = boot_timeout(t.accel);
    t.vm.wait_for_text(text, bound)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Waits for `text` unless it went by already (service output races the phase lines).
fn seen_or_wait(t: &mut TestVm, text: &str) {
    if !t.vm.console().history().iter().any(|l| l.contains(text)) {
        wait(t, text);
    }
}

fn phase(t: &mut TestVm, phase: Phase) -> String {
    let bound = boot_timeout(t.accel);
    t.vm.wait_for_phase(phase, bound)
        .unwrap_or_else(|e| panic!("{e}"))
        .detail
}

/// Boots `raw` (an overlay over it: the file stays as it is) with the TPM state `tpm`
/// under the Secure Boot firmware with `store` (the plain firmware without).
fn boot(raw: &Path, dir: &Path, tpm: Option<&Path>, store: Option<&Path>) -> (Disk, TestVm) {
    let mut disk = Disk::over(raw, dir);
    let vars = disk.scratch.path().join("efivars-secure-boot.fd");
    let opts = BootOptions::default();
    let adjust = |c: &mut crust_vm::Config| {
        if let Some(store) = store {
            c.firmware = Firmware::secure_boot(&vars, store).expect("Secure Boot firmware");
        }
    };
    let vm = match tpm {
        Some(tpm) => disk.boot_with_tpm(opts, tpm, adjust),
        None => disk.boot_with(opts, adjust),
    };
    (disk, vm)
}

/// How often `needle` occurs in the state partition of `raw` (GNU grep, over the bytes).
fn state_count(raw: &Path, needle: &str) -> usize {
    let part = partition(raw, "state");
    let out = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("tail -c +$(($2 + 1)) \"$1\" | head -c \"$3\" | grep -a -o -F -e \"$4\" | wc -l")
            .arg("sh")
            .arg(raw)
            .arg(part.offset.to_string())
            .arg(part.size.to_string())
            .arg(needle),
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a count")
}

/// Whether the state partitions of `a` and `b` hold the same bytes (`cmp`).
fn same_state(a: &Path, b: &Path) -> bool {
    let part = partition(a, "state");
    assert_eq!(part.offset, partition(b, "state").offset);
    Command::new("cmp")
        .arg("-s")
        .arg(format!("--bytes={}", part.size))
        .arg(format!("--ignore-initial={}", part.offset))
        .arg(a)
        .arg(b)
        .status()
        .expect("cmp (diffutils)")
        .success()
}

/// Decrypts the state partition's data with `key` as dm-crypt's `aes-xts-plain64` with
/// 4096-byte sectors lays it out (the IV counts 512-byte sectors), with pyca/cryptography
/// (Debian's python3-cryptography: OpenSSL's XTS); writes the plain file system to `out`.
fn decrypt(raw: &Path, key: &[u8], out: &Path) {
    let part = partition(raw, "state");
    let key_file = out.with_extension("key");
    std::fs::write(&key_file, key).unwrap();
    let script = format!(
        "import sys\n\
         from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes\n\
         key = open(sys.argv[1], 'rb').read()\n\
         src = open(sys.argv[2], 'rb'); src.seek(int(sys.argv[3]))\n\
         dst = open(sys.argv[4], 'wb')\n\
         for n in range(int(sys.argv[5])):\n\
         \x20   tweak = (n * {per}).to_bytes(16, 'little')\n\
         \x20   d = Cipher(algorithms.AES(key), modes.XTS(tweak)).decryptor()\n\
         \x20   dst.write(d.update(src.read({SECTOR_SIZE})) + d.finalize())\n",
        per = SECTOR_SIZE / 512,
    );
    run_ok(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&key_file)
            .arg(raw)
            .arg((part.offset + DATA_OFFSET).to_string())
            .arg(out)
            .arg(((part.size - DATA_OFFSET) / u64::from(SECTOR_SIZE)).to_string()),
    );
    std::fs::remove_file(key_file).unwrap();
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

#[test]
#[ignore = "builds two signed versions and boots them with swtpm; run through `cargo xtask test`"]
fn var_is_sealed_to_the_boot_chain_survives_updates_and_is_never_destroyed() {
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let keys = generate(&w.join("keys-a"), "Crust sealed test").expect("keygen");
    let other = generate(&w.join("keys-b"), "Crust other").expect("keygen");
    let owner = crust_builder::sealed::generate_recovery_key(w, "owner").expect("owner key");
    let owner_public = crust_builder::sealed::read_recovery_public(&owner.public).unwrap();
    let marker = format!("crust-sealed-marker-{:016x}", now() ^ 0x5eed_5eed_5eed);
    let ed25519 = w.join("ed25519");
    let port = repo::free_port();
    let host = format!(
        "version = 1\n[update]\nrepository = \"http://10.0.2.2:{port}\"\nchannel = \"stable\"\n\
         interval = 10\nhealth-timeout = 15\n"
    );
    let files = [("host.toml", host.as_str())];
    let v1 = repo::variant(
        w,
        &ed25519,
        "0.1.0",
        &extra(keys.dir(), &owner.public, &marker, "refuse"),
        &files,
    );
    let v2 = repo::variant(
        w,
        &ed25519,
        "0.2.0",
        &extra(keys.dir(), &owner.public, &marker, "tmpfs"),
        &files,
    );
    eprintln!("=== built 0.1.0 and 0.2.0 in {:?}", started.elapsed());
    let signing = SigningKey::development(&ed25519).unwrap();
    let repo_dir = w.join("repo");
    let _server = Server::start(&repo_dir, port);
    release_to(
        &repo_dir,
        "stable",
        &v2.join(outputs::BUNDLE),
        &signing,
        86_400,
        now(),
    );
    // The machine's firmware holds both key sets' db certificates: it runs what either
    // signs.
    let owner_guid = keys.owner().to_string();
    let enrolment = firmware::Enrolment {
        owner: &owner_guid,
        pk: &keys.certificate(Role::Pk),
        kek: &keys.certificate(Role::Kek),
        db: &keys.certificate(Role::Db),
    };
    let (store, store_off) = (w.join("enrolled.fd"), w.join("secure-boot-off.fd"));
    for (out, enforce) in [(&store, true), (&store_off, false)] {
        firmware::enrolled_store_with(
            &env_path("CRUST_TEST_VIRT_FW_VARS"),
            &enrolment,
            &[&other.certificate(Role::Db)],
            enforce,
            out,
        )
        .expect("virt-fw-vars");
    }
    let tpm = w.join("tpm");
    let v1_manifest =
        crust_format::Manifest::parse(&std::fs::read(v1.join(outputs::MANIFEST)).unwrap()).unwrap();

    // 1. First boot (on a disk 256 MiB larger than the image, as a cloud volume is), then the
    // update and the new version's boot, on one machine.
    let mut disk = Disk::over(&v1.join(outputs::IMAGE), &v1);
    disk.grow(256 << 20);
    let vars = disk.scratch.path().join("efivars-secure-boot.fd");
    let mut t = disk.boot_with_tpm(
        BootOptions {
            nvme: false,
            no_reboot: false,
        },
        &tpm,
        |c| c.firmware = Firmware::secure_boot(&vars, &store).expect("firmware"),
    );
    wait(&mut t, ENABLED);
    let measured = wait(&mut t, "measure: PCR 12 extended with sha256:");
    assert!(
        measured.contains(&format!("root-hash={}", v1_manifest.verity.root_hash)),
        "{measured}"
    );
    let state = phase(&mut t, Phase::State);
    for want in [
        "encrypted (as /dev/dm-1: new key",
        "sealed in",
        "to PCR 7 and PCR 11 signed by",
        &format!("recovery copy for key {}", hex::encode(&owner_public[..6])),
        "dm-crypt aes-xts-plain64 opened",
        "ext4 made in",
        "ext4 on /var, 0.5 GiB (grown from 0.2 GiB)",
        "(new), boot 1",
    ] {
        assert!(state.contains(want), "{want:?} not in: {state}");
    }
    let history = t.vm.console().history().join("\n");
    assert!(
        history.contains("PCR 11 extended with sha256:") && history.contains("crust:state-done"),
        "PCR 11 was not closed after /var:\n{history}"
    );
    let config = phase(&mut t, Phase::Config);
    let history = t.vm.console().history().join("\n");
    assert!(
        history.contains("user-data-source=image default /usr/lib/crust/config.toml")
            && history.contains(&format!(
                "user-data={}",
                crust_format::Digest::of(host.as_bytes())
            )),
        "the user-data was not measured before {config}:\n{history}"
    );
    let ready = phase(&mut t, Phase::Ready);
    assert!(ready.contains("crust 0.1.0, slot a"), "{ready}");
    seen_or_wait(&mut t, &format!("marker: {marker}"));
    wait(&mut t, "update: 0.2.0 installed in slot b");
    eprintln!(
        "=== 0.1.0 sealed /var and installed 0.2.0 ({:?})",
        started.elapsed()
    );
    let state = phase(&mut t, Phase::State);
    assert!(
        state.contains("key unsealed in") && state.contains("(kept), boot 2"),
        "0.2.0 did not open 0.1.0's /var: {state}"
    );
    let ready = phase(&mut t, Phase::Ready);
    assert!(ready.contains("crust 0.2.0, slot b"), "{ready}");
    wait(&mut t, "update: 0.2.0 in slot b is healthy: blessed");
    t.power_off();
    drop(t);
    let raw = w.join("after-update.raw");
    std::fs::rename(disk.to_raw(), &raw).unwrap();
    drop(disk);
    eprintln!(
        "=== 0.2.0 unsealed it and was blessed ({:?})",
        started.elapsed()
    );

    // 2. Offline: encrypted, and readable with the owner's recovery key.
    assert_eq!(
        state_count(&raw, &marker),
        0,
        "the marker is in the state partition's raw bytes"
    );
    // (The search itself works: both header slots say their cipher in plain text.)
    assert_eq!(state_count(&raw, "cipher=aes-xts-plain64\n"), 2);
    let header = crust_builder::sealed::read_header(&raw, partition(&raw, "state").offset)
        .expect("the state header");
    assert_eq!(header.state, HeaderState::Ready);
    assert_eq!(
        header.recovery.as_ref().map(|r| r.owner),
        Some(owner_public)
    );
    let volume_key = crust_builder::sealed::recover(&raw, &owner.private).expect("recovery");
    let stranger = crust_builder::sealed::generate_recovery_key(w, "stranger").unwrap();
    assert!(
        crust_builder::sealed::recover(&raw, &stranger.private).is_err(),
        "another owner key opened the recovery copy"
    );
    let plain = w.join("var.ext4");
    decrypt(&raw, &volume_key, &plain);
    run_ok(Command::new("e2fsck").arg("-fn").arg(&plain));
    let log = run_ok(
        Command::new("debugfs")
            .args(["-R", "cat /log/crust/marker.log"])
            .arg(&plain),
    );
    assert_eq!(
        count(&log.stdout, marker.as_bytes()),
        2,
        "the marker of both boots is in /var/log/crust/marker.log: {}",
        String::from_utf8_lossy(&log.stdout)
    );
    std::fs::remove_file(&plain).unwrap();

    // 3. The same disk where the key must not unseal: 0.2.0's policy is a tmpfs /var.
    let refused = |t: &mut TestVm, why: &str| {
        let warning = wait(t, "/var's key is not available:");
        assert!(warning.contains(why), "{why:?} not in: {warning}");
        assert!(warning.contains("untouched"), "{warning}");
        let state = phase(t, Phase::State);
        assert!(state.contains("NOT persistent (state-key)"), "{state}");
        let ready = phase(t, Phase::Ready);
        assert!(ready.contains("crust 0.2.0, slot b"), "{ready}");
        t.power_off();
    };
    let untouched = |disk: Disk, what: &str| {
        let after = disk.to_raw();
        assert!(
            same_state(&raw, &after),
            "the state partition changed on the boot {what}"
        );
    };
    // Another machine's TPM.
    let (disk, mut t) = boot(&raw, &v2, Some(&w.join("tpm-other")), Some(&store));
    refused(&mut t, "this TPM did not seal /var's key");
    drop(t);
    untouched(disk, "with another TPM");
    eprintln!("=== another TPM: refused ({:?})", started.elapsed());
    // Secure Boot turned off in the firmware (the keys still enrolled), same TPM.
    let (disk, mut t) = boot(&raw, &v2, Some(&tpm), Some(&store_off));
    refused(&mut t, "PCR 7 differs from when /var's key was sealed");
    assert!(
        !t.vm.console().history().iter().any(|l| l.contains(ENABLED)),
        "Secure Boot was on"
    );
    drop(t);
    untouched(disk, "with Secure Boot off");
    eprintln!("=== Secure Boot off: refused ({:?})", started.elapsed());
    // The same UKI signed by the other key set, whose db certificate is enrolled too: the
    // firmware runs it, PCR 7 names another signer.
    let resigned = w.join("resigned.raw");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&raw)
            .arg(&resigned),
    );
    let esp = format!(
        "{}@@{}",
        resigned.display(),
        partition(&resigned, "esp").offset
    );
    let uki = w.join("uki.efi");
    let uki_path = "::/EFI/Linux/crust_0.2.0.efi";
    run_ok(
        Command::new("mcopy")
            .args(["-n", "-i", &esp, uki_path])
            .arg(&uki),
    );
    let signed = other
        .signer(0)
        .and_then(|s| s.sign_pe(&std::fs::read(&uki).unwrap()))
        .expect("re-sign");
    std::fs::write(&uki, signed).unwrap();
    run_ok(
        Command::new("mcopy")
            .args(["-o", "-n", "-i", &esp])
            .arg(&uki)
            .arg(uki_path),
    );
    let (disk, mut t) = boot(&resigned, &v2, Some(&tpm), Some(&store));
    wait(&mut t, ENABLED);
    refused(&mut t, "PCR 7 differs from when /var's key was sealed");
    drop(t);
    untouched(disk, "of the re-signed UKI");
    std::fs::remove_file(&resigned).unwrap();
    eprintln!(
        "=== a UKI signed by another db key: refused ({:?})",
        started.elapsed()
    );
    // And the machine it was sealed on still opens it.
    let (_disk, mut t) = boot(&raw, &v2, Some(&tpm), Some(&store));
    let state = phase(&mut t, Phase::State);
    assert!(
        state.contains("key unsealed in") && state.contains("(kept), boot 3"),
        "{state}"
    );
    phase(&mut t, Phase::Ready);
    t.power_off();
    drop(t);
    eprintln!(
        "=== the sealing machine opens it again ({:?})",
        started.elapsed()
    );

    // 4. 0.1.0 refuses to run without a TPM.
    let (_disk, mut t) = boot(&v1.join(outputs::IMAGE), &v1, None, Some(&store));
    t.vm.console().allow("] crust: error:");
    let error = wait(&mut t, "crust: error: state-key:");
    for want in [
        "this machine has no TPM 2.0",
        "refuses to run without its encrypted /var",
        "state.without-tpm = \"refuse\"",
    ] {
        assert!(error.contains(want), "{want:?} not in: {error}");
    }
    let status = t.vm.wait_exit(Duration::from_secs(60)).expect("reboot");
    assert!(status.success(), "QEMU exited with {status}");
    assert!(
        !t.vm
            .console()
            .history()
            .iter()
            .any(|l| l.contains("crust: ready")),
        "a refusing image came up"
    );
    eprintln!("=== no TPM: refused; done in {:?}", started.elapsed());
}
