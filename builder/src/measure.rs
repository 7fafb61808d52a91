//! PCR 11 predicted and its policy signed at build time (systemd-measure's scheme), so that
//! any UKI the image's key signed unseals `/var`'s key and nothing else does.
//!
//! systemd's stub (Debian 12: systemd-boot-efi 252) measures the UKI's `.linux`, `.osrel`,
//! `.cmdline`, `.initrd` and `.pcrpkey` sections into PCR 11 before it starts the kernel
//! ([`crust_format::pcr::predict_kernel_image`]; `.uname` is not measured by 252, `.pcrsig`
//! by none). The builder computes that value from the sections it assembles, the policy
//! that approves it (`PolicyPCR` over PCR 11), and signs the policy with the key set's PCR
//! key (RSA-2048, RSASSA-PKCS1-v1_5 with SHA-256: deterministic, so builds stay
//! reproducible). The signature goes into the UKI's `.pcrsig` section in systemd's JSON
//! (`{"sha256":[{"pcrs":[11],"pkfp":…,"pol":…,"sig":…}]}`), which the stub hands to the
//! initramfs as `/.extra/tpm2-pcr-signature.json`; the public key goes into `.pcrpkey`
//! (measured, so PCR 11 also names the key) and into the root's state policy.
//!
//! `systemd-measure` (systemd 252) is the oracle: the tests check that it computes the same
//! PCR 11 and signs the same bytes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use crust_format::pcr::{self, RsaKey};
use crust_format::sealed::{Encryption, StatePolicy};
use serde::Serialize;

use crate::profile::Profile;
use crate::uki;

/// Modules the init needs to open an encrypted state partition: dm-crypt, the XTS mode and
/// the ECB mode XTS is built on (the crypto API finds templates by loading modules, which
/// needs a `modprobe` the init does not have), and AES-NI where the CPU has it (on a CPU
/// without, the module finds no device and the kernel's built-in generic AES serves).
pub const STATE_MODULES: &[&str] = &["dm_crypt", "ecb", "xts", "aesni_intel"];

/// The PCR signing key of a Secure Boot key set.
#[derive(Debug, Clone)]
pub struct PcrSigner {
    /// The private key (PKCS#8 PEM, mode 0600).
    pub private: PathBuf,
    /// The public key's PEM, as it goes into `.pcrpkey`.
    pub public_pem: Vec<u8>,
    /// The public key.
    pub public: RsaKey,
}

impl PcrSigner {
    /// Reads the key pair (`private` and its public PEM `public`).
    pub fn open(private: &Path, public: &Path) -> Result<Self> {
        let public_pem =
            std::fs::read(public).with_context(|| format!("cannot read {}", public.display()))?;
        let der = openssl(
            Command::new("openssl")
                .args(["pkey", "-pubin", "-outform", "DER", "-in"])
                .arg(public),
            None,
        )?;
        let key = RsaKey::from_spki(&der).with_context(|| public.display().to_string())?;
        // The pair must match: a signature by another private key would never verify.
        let from_private = openssl(
            Command::new("openssl")
                .args(["pkey", "-pubout", "-outform", "DER", "-in"])
                .arg(private),
            None,
        )?;
        if from_private != der {
            bail!(
                "{} is not the public key of {}",
                public.display(),
                private.display()
            );
        }
        Ok(Self {
            private: private.to_path_buf(),
            public_pem,
            public: key,
        })
    }

    /// Signs `policy` (RSASSA-PKCS1-v1_5, SHA-256): what `TPM2_VerifySignature` checks as a
    /// signature of `H(policy)`.
    pub fn sign(&self, policy: &[u8; 32]) -> Result<Vec<u8>> {
        openssl(
            Command::new("openssl")
                .args(["dgst", "-sha256", "-sign"])
                .arg(&self.private),
            Some(policy),
        )
    }
}

fn openssl(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<Vec<u8>> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run openssl: install Debian's openssl package")?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.unwrap_or_default())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("openssl: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}

/// PCR 11 after the stub measured a UKI of these parts and this `.pcrpkey`.
pub fn predict(parts: &uki::Parts<'_>, pcrpkey: &[u8]) -> [u8; 32] {
    pcr::predict_kernel_image(&[
        (".linux", parts.linux),
        (".osrel", parts.os_release.as_bytes()),
        (".cmdline", parts.cmdline.as_bytes()),
        (".initrd", parts.initrd),
        (".pcrpkey", pcrpkey),
    ])
}

#[derive(Serialize)]
struct SignatureFile {
    sha256: Vec<SignatureEntry>,
}

#[derive(Serialize)]
struct SignatureEntry {
    pcrs: Vec<u32>,
    pkfp: String,
    pol: String,
    sig: String,
}

/// The `.pcrsig` section of a UKI of `parts` whose `.pcrpkey` is the signer's public key:
/// the policy for the PCR 11 it will measure, signed, in systemd's JSON.
pub fn signature(parts: &uki::Parts<'_>, signer: &PcrSigner) -> Result<Vec<u8>> {
    let value = predict(parts, &signer.public_pem);
    let policy = pcr::kernel_image_policy(&value);
    let sig = signer.sign(&policy)?;
    let file = SignatureFile {
        sha256: vec![SignatureEntry {
            pcrs: vec![pcr::KERNEL_IMAGE],
            pkfp: hex::encode(signer.public.fingerprint()),
            pol: hex::encode(policy),
            sig: base64::engine::general_purpose::STANDARD.encode(sig),
        }],
    };
    Ok(serde_json::to_vec(&file)?)
}

/// The root's state policy ([`crust_format::sealed::POLICY_PATH`]) for a profile; `pcr_key`
/// is the key set's PCR key (Secure Boot profiles), `recovery` the owner's key.
pub fn state_policy(
    profile: &Profile,
    pcr_key: Option<&RsaKey>,
    recovery: Option<[u8; 32]>,
) -> StatePolicy {
    StatePolicy {
        encryption: profile.state.encryption.value,
        without_tpm: profile.state.without_tpm.value,
        pcr_key: pcr_key.cloned(),
        recovery_key: recovery,
    }
}

/// Whether the builder writes a fresh encrypted header instead of an ext4.
pub fn encrypted(profile: &Profile) -> bool {
    profile.state.encryption.value == Encryption::Tpm
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair(dir: &Path) -> PcrSigner {
        let key = dir.join("pcr.key");
        let public = dir.join("pcr.pub");
        let ok = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&key)
            .status()
            .unwrap();
        assert!(ok.success());
        let ok = Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&public)
            .status()
            .unwrap();
        assert!(ok.success());
        PcrSigner::open(&key, &public).unwrap()
    }

    /// A software TPM for systemd-measure, which asks one for the policy digest.
    struct Swtpm(std::process::Child, u16);

    impl Swtpm {
        fn start(dir: &Path) -> Self {
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            };
            let state = dir.join("tpm");
            std::fs::create_dir_all(&state).unwrap();
            let child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--tpmstate"])
                .arg(format!("dir={}", state.display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .args(["--flags", "not-need-init,startup-clear"])
                .spawn()
                .expect("swtpm (cargo xtask test installs it)");
            for _ in 0..250 {
                if std::net::TcpStream::connect(("127.0.0.1", port + 1)).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Self(child, port)
        }
    }

    impl Drop for Swtpm {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn systemd_measure_predicts_and_signs_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let signer = keypair(dir.path());
        let initrd: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let linux = vec![0x4du8; 12345];
        let parts = uki::Parts {
            os_release: "ID=crust\nIMAGE_VERSION=1.0\n",
            cmdline: "console=ttyS0 panic=10",
            uname: "6.1.0-test",
            initrd: &initrd,
            linux: &linux,
            pcrpkey: Some(&signer.public_pem),
            pcrsig: None,
        };
        let files = [
            ("linux", parts.linux),
            ("osrel", parts.os_release.as_bytes()),
            ("cmdline", parts.cmdline.as_bytes()),
            ("initrd", parts.initrd),
        ];
        let mut args = Vec::new();
        for (name, data) in files {
            let path = dir.path().join(name);
            std::fs::write(&path, data).unwrap();
            args.push(format!("--{name}={}", path.display()));
        }
        args.push(format!(
            "--pcrpkey={}",
            dir.path().join("pcr.pub").display()
        ));
        args.extend(["--bank=sha256".into(), "--phase=".into()]);
        let measure = "/usr/lib/systemd/systemd-measure";
        let out = Command::new(measure)
            .arg("calculate")
            .args(&args)
            .output()
            .expect("systemd-measure (Debian's systemd)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let expected = format!(
            "11:sha256={}",
            hex::encode(predict(&parts, &signer.public_pem))
        );
        assert!(
            text.contains(&expected),
            "ours: {expected}\nsystemd-measure:\n{text}"
        );

        let ours = signature(&parts, &signer).unwrap();
        let tpm = Swtpm::start(dir.path());
        let out = Command::new(measure)
            .arg("sign")
            .args(&args)
            .arg(format!("--private-key={}", signer.private.display()))
            .arg(format!(
                "--public-key={}",
                dir.path().join("pcr.pub").display()
            ))
            .arg(format!("--tpm2-device=swtpm:host=127.0.0.1,port={}", tpm.1))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&out.stdout).trim_end(),
            "systemd-measure signs other bytes"
        );
        assert_eq!(ours, signature(&parts, &signer).unwrap(), "deterministic");
    }

    #[test]
    fn a_mismatched_key_pair_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a_dir).unwrap();
        std::fs::create_dir_all(&b_dir).unwrap();
        let a = keypair(&a_dir);
        let b = keypair(&b_dir);
        let err = PcrSigner::open(&a.private, &b.private.with_file_name("pcr.pub"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not the public key"), "{err}");
    }
}
