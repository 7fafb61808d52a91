//! The command layer against a real TPM 2.0 implementation (Debian's swtpm, libtpms inside)
//! and checked by an independent client (Debian's tpm2-tools, over the same swtpm): PCRs
//! read and extended, policy digests of trial sessions, and a key sealed here that
//! tpm2-tools unseals under the same signed policy (and that refuses to unseal when PCR 7
//! or PCR 11 moves, or the signature is by another key).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use crust_format::pcr::{self, ALG_SHA256, RsaKey};
use crust_vm::tpm::Swtpm;

use super::policy::{self, SignedPolicy, UnsealError};
use super::{Tpm, Transport, measure};

/// swtpm's command socket: raw TPM commands, as `/dev/tpmrm0` takes them.
struct Tcp(TcpStream);

impl Transport for Tcp {
    fn transact(&mut self, command: &[u8]) -> std::io::Result<Vec<u8>> {
        self.0.write_all(command)?;
        let mut header = [0u8; 10];
        self.0.read_exact(&mut header)?;
        let size = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
        let mut out = header.to_vec();
        out.resize(size.max(10), 0);
        self.0.read_exact(&mut out[10..])?;
        Ok(out)
    }
}

struct Bench {
    dir: tempfile::TempDir,
    swtpm: Swtpm,
}

impl Bench {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let swtpm = Swtpm::server(&dir.path().join("state"))
            .unwrap_or_else(|e| panic!("{e:#} (cargo xtask test installs swtpm)"));
        Self { dir, swtpm }
    }

    /// A connection for this code; drop it before running tpm2-tools (swtpm serves one
    /// connection at a time).
    fn tpm(&self) -> Tpm {
        let port = self.swtpm.port.unwrap();
        Tpm::over(Tcp(TcpStream::connect(("127.0.0.1", port)).unwrap()))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs a tpm2-tools command against the swtpm; returns stdout.
    fn tool(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new(args[0])
            .args(&args[1..])
            .current_dir(self.dir.path())
            .env("TPM2TOOLS_TCTI", self.swtpm.tcti().unwrap())
            .output()
            .unwrap_or_else(|e| panic!("{}: {e} (cargo xtask test installs tpm2-tools)", args[0]));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An RSA-2048 signing key in `dir` (`NAME.key`, `NAME.pub` PEM, `NAME.der` SPKI).
fn signing_key(dir: &Path, name: &str) -> RsaKey {
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &format!("{name}.key"),
        ],
    );
    openssl(
        dir,
        &[
            "pkey",
            "-in",
            &format!("{name}.key"),
            "-pubout",
            "-out",
            &format!("{name}.pub"),
        ],
    );
    openssl(
        dir,
        &[
            "pkey",
            "-in",
            &format!("{name}.key"),
            "-pubout",
            "-outform",
            "DER",
            "-out",
            &format!("{name}.der"),
        ],
    );
    RsaKey::from_spki(&std::fs::read(dir.join(format!("{name}.der"))).unwrap()).unwrap()
}

/// `policy` signed by the key `name` as the builder signs it (openssl, SHA-256, PKCS#1 v1.5).
fn sign(dir: &Path, name: &str, key: &RsaKey, policy: &[u8; 32]) -> SignedPolicy {
    std::fs::write(dir.join("approved.pol"), policy).unwrap();
    openssl(
        dir,
        &[
            "dgst",
            "-sha256",
            "-sign",
            &format!("{name}.key"),
            "-out",
            "approved.sig",
            "approved.pol",
        ],
    );
    SignedPolicy {
        policy: *policy,
        key_fingerprint: key.fingerprint(),
        signature: std::fs::read(dir.join("approved.sig")).unwrap(),
    }
}

#[test]
fn pcrs_are_extended_and_read_as_tpm2_tools_sees_them() {
    let bench = Bench::new();
    let mut tpm = bench.tpm();
    let banks = tpm.pcr_banks().unwrap();
    assert!(banks.contains(&ALG_SHA256), "{banks:?}");
    assert_eq!(tpm.pcr_read(pcr::CRUST).unwrap(), Some([0; 32]));
    let log = bench.path("measurements");
    measure::extend_logged(&mut tpm, pcr::CRUST, "root-hash=ab", &log).unwrap();
    let expected = pcr::extend(&[0; 32], &crust_format::Digest::of(b"root-hash=ab").0);
    assert_eq!(tpm.pcr_read(pcr::CRUST).unwrap(), Some(expected));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        format!(
            "12 {} root-hash=ab\n",
            crust_format::Digest::of(b"root-hash=ab")
        )
    );
    let random = tpm.random(70).unwrap();
    assert_eq!(random.len(), 70);
    assert_ne!(&random[..32], &[0; 32]);
    drop(tpm);
    bench.tool(&["tpm2_pcrread", "sha256:12", "-o", "pcr12.bin"]);
    assert_eq!(bench.read("pcr12.bin"), expected);
    // The SHA-1 bank got SHA-1 of the same event.
    bench.tool(&["tpm2_pcrread", "sha1:12", "-o", "pcr12.sha1"]);
    let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, b"root-hash=ab");
    let mut pcr = [0u8; 20].to_vec();
    pcr.extend_from_slice(sha1.as_ref());
    let want = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &pcr);
    assert_eq!(bench.read("pcr12.sha1"), want.as_ref());
}

#[test]
fn policy_digests_match_the_tpm_and_tpm2_tools() {
    let bench = Bench::new();
    let key = signing_key(bench.dir.path(), "pcr");
    let mut tpm = bench.tpm();
    measure::extend_logged(&mut tpm, pcr::KERNEL_IMAGE, "a UKI", &bench.path("log")).unwrap();
    let pcr11 = tpm.pcr_read(pcr::KERNEL_IMAGE).unwrap().unwrap();
    let pcr7 = tpm.pcr_read(pcr::SECURE_BOOT).unwrap().unwrap();
    // The TPM's own trial session.
    let trial = tpm.policy_session(true).unwrap();
    tpm.policy_pcr(trial, &[pcr::KERNEL_IMAGE]).unwrap();
    assert_eq!(
        tpm.policy_digest(trial).unwrap(),
        pcr::kernel_image_policy(&pcr11)
    );
    tpm.flush(trial);
    let loaded = tpm.load_public(&key.tpm_public()).unwrap();
    assert_eq!(
        loaded.name,
        key.tpm_name(),
        "the TPM names the key as we do"
    );
    tpm.flush(loaded.handle);
    let srk = tpm.storage_key().unwrap();
    tpm.flush(srk.handle);
    drop(tpm);

    // tpm2-tools' trial sessions.
    bench.tool(&["tpm2_startauthsession", "-S", "s.ctx"]);
    bench.tool(&[
        "tpm2_policypcr",
        "-S",
        "s.ctx",
        "-l",
        "sha256:11",
        "-L",
        "pcr11.pol",
    ]);
    bench.tool(&["tpm2_flushcontext", "s.ctx"]);
    assert_eq!(bench.read("pcr11.pol"), pcr::kernel_image_policy(&pcr11));
    bench.tool(&[
        "tpm2_loadexternal",
        "-C",
        "o",
        "-G",
        "rsa",
        "-u",
        "pcr.pub",
        "-c",
        "k.ctx",
        "-n",
        "k.name",
    ]);
    assert_eq!(bench.read("k.name"), key.tpm_name());
    std::fs::write(bench.path("approved.pol"), pcr::kernel_image_policy(&pcr11)).unwrap();
    bench.tool(&["tpm2_startauthsession", "-S", "s.ctx"]);
    bench.tool(&[
        "tpm2_policyauthorize",
        "-S",
        "s.ctx",
        "-i",
        "approved.pol",
        "-n",
        "k.name",
        "-L",
        "auth.pol",
    ]);
    bench.tool(&[
        "tpm2_policypcr",
        "-S",
        "s.ctx",
        "-l",
        "sha256:7",
        "-L",
        "sealing.pol",
    ]);
    bench.tool(&["tpm2_flushcontext", "s.ctx"]);
    assert_eq!(
        bench.read("auth.pol"),
        pcr::policy_authorize(&key.tpm_name())
    );
    assert_eq!(
        bench.read("sealing.pol"),
        pcr::sealing_policy(&key.tpm_name(), &pcr7)
    );
    // The storage key: tpm2-tools' createprimary with the same template makes the same key.
    bench.tool(&[
        "tpm2_createprimary",
        "-C",
        "o",
        "-g",
        "sha256",
        "-G",
        "ecc256:aes128cfb",
        "-a",
        "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda",
        "-c",
        "srk.ctx",
    ]);
    let name = bench.tool(&["tpm2_readpublic", "-c", "srk.ctx"]);
    let text = String::from_utf8_lossy(&name);
    assert!(
        text.contains(&format!("name: {}", hex::encode(&srk.name))),
        "tpm2_createprimary made another key than ours ({}):\n{text}",
        hex::encode(&srk.name)
    );
}

#[test]
fn sealed_here_unsealed_by_tpm2_tools_and_refused_when_the_boot_chain_moves() {
    let bench = Bench::new();
    let dir = bench.dir.path();
    let key = signing_key(dir, "pcr");
    let other = signing_key(dir, "other");
    let secret: Vec<u8> = (0..64u8).collect();
    let mut tpm = bench.tpm();
    // A "UKI" measured into PCR 11, and its policy signed at "build time".
    measure::extend_logged(&mut tpm, pcr::KERNEL_IMAGE, "uki 1", &bench.path("log")).unwrap();
    let pcr11 = tpm.pcr_read(pcr::KERNEL_IMAGE).unwrap().unwrap();
    let signed = sign(dir, "pcr", &key, &pcr::kernel_image_policy(&pcr11));
    let (blob, pcr7) = policy::seal(&mut tpm, &secret, &key).unwrap();
    assert_eq!(Some(pcr7), tpm.pcr_read(pcr::SECURE_BOOT).unwrap());
    let unsealed = policy::unseal(&mut tpm, &blob, &key, std::slice::from_ref(&signed)).unwrap();
    assert_eq!(*unsealed, secret);
    // A signature by another key, even enrolled alongside: the key the secret was sealed to
    // signed nothing for this UKI.
    let foreign = sign(dir, "other", &other, &pcr::kernel_image_policy(&pcr11));
    assert!(matches!(
        policy::unseal(&mut tpm, &blob, &key, std::slice::from_ref(&foreign)),
        Err(UnsealError::SignedByAnotherKey)
    ));
    // A forged entry claiming our key's fingerprint: the TPM checks the signature.
    let forged = SignedPolicy {
        key_fingerprint: key.fingerprint(),
        ..foreign.clone()
    };
    assert!(matches!(
        policy::unseal(&mut tpm, &blob, &key, std::slice::from_ref(&forged)),
        Err(UnsealError::SignatureRefused(_))
    ));
    drop(tpm);

    // tpm2-tools loads the blob under its own storage key and unseals it with the same
    // session steps.
    std::fs::write(bench.path("sealed.pub"), &blob.public).unwrap();
    std::fs::write(bench.path("sealed.priv"), &blob.private).unwrap();
    std::fs::write(bench.path("approved.pol"), signed.policy).unwrap();
    std::fs::write(bench.path("approved.sig"), &signed.signature).unwrap();
    bench.tool(&[
        "tpm2_createprimary",
        "-C",
        "o",
        "-g",
        "sha256",
        "-G",
        "ecc256:aes128cfb",
        "-a",
        "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda",
        "-c",
        "srk.ctx",
    ]);
    bench.tool(&[
        "tpm2_load",
        "-C",
        "srk.ctx",
        "-u",
        "sealed.pub",
        "-r",
        "sealed.priv",
        "-c",
        "sealed.ctx",
    ]);
    bench.tool(&["tpm2_flushcontext", "-t"]);
    bench.tool(&[
        "tpm2_loadexternal",
        "-C",
        "o",
        "-G",
        "rsa",
        "-u",
        "pcr.pub",
        "-c",
        "k.ctx",
        "-n",
        "k.name",
    ]);
    bench.tool(&[
        "tpm2_verifysignature",
        "-c",
        "k.ctx",
        "-g",
        "sha256",
        "-m",
        "approved.pol",
        "-s",
        "approved.sig",
        "-f",
        "rsassa",
        "-t",
        "ticket",
    ]);
    bench.tool(&["tpm2_flushcontext", "-t"]);
    bench.tool(&["tpm2_startauthsession", "--policy-session", "-S", "s.ctx"]);
    bench.tool(&["tpm2_policypcr", "-S", "s.ctx", "-l", "sha256:11"]);
    bench.tool(&[
        "tpm2_policyauthorize",
        "-S",
        "s.ctx",
        "-i",
        "approved.pol",
        "-n",
        "k.name",
        "-t",
        "ticket",
    ]);
    bench.tool(&["tpm2_policypcr", "-S", "s.ctx", "-l", "sha256:7"]);
    bench.tool(&["tpm2_flushcontext", "-t"]);
    let out = bench.tool(&["tpm2_unseal", "-c", "sealed.ctx", "-p", "session:s.ctx"]);
    assert_eq!(out, secret, "tpm2-tools unsealed something else");

    // Another UKI (PCR 11 moves): no signed policy matches.
    let mut tpm = bench.tpm();
    measure::extend_logged(&mut tpm, pcr::KERNEL_IMAGE, "uki 2", &bench.path("log")).unwrap();
    assert!(matches!(
        policy::unseal(&mut tpm, &blob, &key, std::slice::from_ref(&signed)),
        Err(UnsealError::KernelImageUnsigned { .. })
    ));
    // That UKI's own signed policy unseals (an update: nothing re-sealed).
    let pcr11 = tpm.pcr_read(pcr::KERNEL_IMAGE).unwrap().unwrap();
    let update = sign(dir, "pcr", &key, &pcr::kernel_image_policy(&pcr11));
    let both = [signed.clone(), update.clone()];
    assert_eq!(
        *policy::unseal(&mut tpm, &blob, &key, &both).unwrap(),
        secret
    );
    // PCR 7 moves (Secure Boot state): the policy fails in the TPM.
    measure::extend_logged(&mut tpm, pcr::SECURE_BOOT, "dbx update", &bench.path("log")).unwrap();
    assert!(matches!(
        policy::unseal(&mut tpm, &blob, &key, std::slice::from_ref(&update)),
        Err(UnsealError::SecureBootChanged(_))
    ));
}

#[test]
fn another_tpm_cannot_load_the_blob() {
    let first = Bench::new();
    let key = signing_key(first.dir.path(), "pcr");
    let mut tpm = first.tpm();
    let (blob, _) = policy::seal(&mut tpm, b"secret", &key).unwrap();
    let second = Bench::new();
    let mut tpm = second.tpm();
    let pcr11 = tpm.pcr_read(pcr::KERNEL_IMAGE).unwrap().unwrap();
    let signed = sign(
        first.dir.path(),
        "pcr",
        &key,
        &pcr::kernel_image_policy(&pcr11),
    );
    match policy::unseal(&mut tpm, &blob, &key, &[signed]) {
        Err(UnsealError::ForeignTpm(e)) => eprintln!("refused: {e}"),
        other => panic!("{other:?}"),
    }
}
