//! The key folder: PK, KEK and db, each an RSA-2048 private key (PKCS#8 PEM, mode 0600) and
//! a self-signed X.509 certificate, and what enrolment needs, made from them once.
//!
//! ```text
//! owner.guid                   the signature owner GUID of every list entry
//! PK.key  PK.crt  PK.esl  PK.auth
//! KEK.key KEK.crt KEK.esl KEK.auth
//! db.key  db.crt  db.esl  db.auth
//! ```
//!
//! `.esl` is the certificate as an EFI signature list, `.auth` that list signed as an
//! update of its variable ([`super::lists`]). A build reads `db.key`, `db.crt` and the
//! three `.auth` files; `PK.key` and `KEK.key` are needed again only to change the enrolled
//! keys, and are best kept offline.
//!
//! The set also holds the PCR signing key, `tpm2-pcr.key` and `tpm2-pcr.pub` (RSA-2048,
//! like systemd's `tpm2-pcr-private-key.pem`): every build signs its UKI's PCR 11 policy
//! with it, and the encrypted `/var` of a host unseals under any policy it signed
//! ([`crate::measure`]). A key of its own, not the db key: whoever holds only `db.key` can
//! make firmware run a UKI, but not make that UKI unseal anyone's `/var`. Sets made before
//! it existed get one from `cargo xtask keygen --secure-boot --dir DIR` (which adds what is
//! missing and touches nothing else), and the development set gets one on first use. RSA-2048 with SHA-256 is what every UEFI implementation
//! accepts (larger keys fail on some firmware); the firmware ignores validity dates.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use uuid::Uuid;

use super::authenticode::Signer;
use super::lists;
use super::{Enroll, Enrolment};
use crate::sign::KeyKind;

/// The file holding the owner GUID.
pub const OWNER_FILE: &str = "owner.guid";
/// The PCR signing key (PKCS#8 PEM, mode 0600).
pub const PCR_KEY_FILE: &str = "tpm2-pcr.key";
/// Its public key (SPKI PEM).
pub const PCR_PUBLIC_FILE: &str = "tpm2-pcr.pub";
/// Days a certificate is valid: the firmware does not check, but tools show it.
const VALID_DAYS: &str = "3650";

/// One of the three keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// The platform key: owns the machine's Secure Boot settings.
    Pk,
    /// The key exchange key: signs changes of db.
    Kek,
    /// The signature database key: signs what boots.
    Db,
}

impl Role {
    /// All three, in enrolment order of their `.auth` files.
    pub const ALL: [Role; 3] = [Role::Pk, Role::Kek, Role::Db];

    /// The UEFI variable name, which is also the file stem: `PK`, `KEK`, `db`.
    pub fn variable(self) -> &'static str {
        match self {
            Role::Pk => "PK",
            Role::Kek => "KEK",
            Role::Db => "db",
        }
    }

    /// Whose key signs an update of this variable: PK its own and KEK's, KEK db's.
    pub fn update_signer(self) -> Role {
        match self {
            Role::Pk | Role::Kek => Role::Pk,
            Role::Db => Role::Kek,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Role::Pk => "Platform Key",
            Role::Kek => "Key Exchange Key",
            Role::Db => "Signature Database Key",
        }
    }
}

/// A key folder that holds at least what a build needs.
#[derive(Debug, Clone)]
pub struct KeySet {
    dir: PathBuf,
    owner: Uuid,
    kind: KeyKind,
}

impl KeySet {
    /// Opens a key folder made by [`generate`] (`cargo xtask keygen --secure-boot`).
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_as(dir, KeyKind::Configured)
    }

    /// The development key set in `dev_key_dir/secure-boot`, made on first use. It signs
    /// every test build of this checkout: for testing only.
    pub fn development(dev_key_dir: &Path) -> Result<Self> {
        let dir = dev_key_dir.join("secure-boot");
        if !dir.join(OWNER_FILE).is_file() {
            generate(&dir, "Crust development")?;
        }
        let set = Self::open_as(&dir, KeyKind::Development)?;
        set.add_pcr_key()?;
        Ok(set)
    }

    fn open_as(dir: &Path, kind: KeyKind) -> Result<Self> {
        let remedy = "make a key set with `cargo xtask keygen --secure-boot`";
        if !dir.is_dir() {
            bail!(
                "Secure Boot key folder {} does not exist; {remedy}",
                dir.display()
            );
        }
        let owner_file = dir.join(OWNER_FILE);
        let text = std::fs::read_to_string(&owner_file)
            .with_context(|| format!("cannot read {}; {remedy}", owner_file.display()))?;
        let owner = Uuid::parse_str(text.trim()).map_err(|e| {
            anyhow::anyhow!(
                "{}: {:?} is not a GUID ({e}); it names the owner of the enrolled keys",
                owner_file.display(),
                text.trim()
            )
        })?;
        let set = Self {
            dir: dir.to_path_buf(),
            owner,
            kind,
        };
        for role in Role::ALL {
            for file in [set.certificate(role), set.update(role)] {
                if !file.is_file() {
                    bail!(
                        "{} is missing from the Secure Boot key folder; {remedy} \
                         (a folder holds PK, KEK and db: .crt, .esl and .auth each)",
                        file.display()
                    );
                }
            }
        }
        Ok(set)
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The owner GUID of every signature list entry.
    pub fn owner(&self) -> Uuid {
        self.owner
    }

    /// Configured by the profile, or the development set.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// `<role>.crt`: the X.509 certificate (PEM).
    pub fn certificate(&self, role: Role) -> PathBuf {
        self.dir.join(format!("{}.crt", role.variable()))
    }

    /// `<role>.key`: the private key (PKCS#8 PEM, mode 0600).
    pub fn private_key(&self, role: Role) -> PathBuf {
        self.dir.join(format!("{}.key", role.variable()))
    }

    /// `<role>.esl`: the certificate as an EFI signature list.
    pub fn signature_list(&self, role: Role) -> PathBuf {
        self.dir.join(format!("{}.esl", role.variable()))
    }

    /// `<role>.auth`: the signature list signed as an update of its variable.
    pub fn update(&self, role: Role) -> PathBuf {
        self.dir.join(format!("{}.auth", role.variable()))
    }

    /// A signer with the db key whose signatures carry `signing_time` (the build's
    /// `SOURCE_DATE_EPOCH`). Refuses a private key that others can read.
    pub fn signer(&self, signing_time: u64) -> Result<Signer> {
        let key = self.private_key(Role::Db);
        check_private(&key)?;
        Ok(Signer::new(&key, &self.certificate(Role::Db), signing_time))
    }

    /// `tpm2-pcr.key`: the PCR signing key.
    pub fn pcr_key(&self) -> PathBuf {
        self.dir.join(PCR_KEY_FILE)
    }

    /// `tpm2-pcr.pub`: its public key.
    pub fn pcr_public(&self) -> PathBuf {
        self.dir.join(PCR_PUBLIC_FILE)
    }

    /// Makes the PCR signing key if the set lacks it (sets made before it existed); returns
    /// whether it did.
    pub fn add_pcr_key(&self) -> Result<bool> {
        if self.pcr_key().exists() {
            return Ok(false);
        }
        make_key(&self.pcr_key())?;
        let public = openssl(
            Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(self.pcr_key()),
            "read the PCR key",
        )?;
        std::fs::write(self.pcr_public(), public)
            .with_context(|| format!("cannot write {}", self.pcr_public().display()))?;
        Ok(true)
    }

    /// The PCR signer of the set. Refuses a key others can read, and names the command that
    /// adds a missing one.
    pub fn pcr_signer(&self) -> Result<crate::measure::PcrSigner> {
        let key = self.pcr_key();
        if !key.is_file() {
            bail!(
                "the Secure Boot key folder {} has no {PCR_KEY_FILE} (the PCR signing key of \
                 the sealed /var; sets made before it lack it): add it with `cargo xtask keygen \
                 --secure-boot --dir {}`, which adds what is missing and touches nothing else",
                self.dir.display(),
                self.dir.parent().unwrap_or(&self.dir).display()
            );
        }
        check_private(&key)?;
        crate::measure::PcrSigner::open(&key, &self.pcr_public())
    }

    /// The three `.auth` files, for the ESP.
    pub fn enrolment(&self, mode: Enroll) -> Result<Enrolment> {
        let mut updates = Vec::new();
        for role in Role::ALL {
            let path = self.update(role);
            let data =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            updates.push((role, data));
        }
        Ok(Enrolment { mode, updates })
    }
}

/// Refuses a private key file that is missing or readable by others.
fn check_private(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "cannot read the Secure Boot signing key {}: builds need db.key (only PK.key and \
             KEK.key may be kept offline)",
            path.display()
        )
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "Secure Boot key {} has mode {mode:04o}: others can read it. Restrict it with \
             `chmod 600 {}` (and consider whether it leaked)",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// Makes a key set in `dir` (created, mode 0700; refused if it holds anything): for each of
/// PK, KEK and db a private key and a certificate named after `name`, the signature lists,
/// and the `.auth` updates stamped with the current time.
pub fn generate(dir: &Path, name: &str) -> Result<KeySet> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    generate_at(dir, name, now)
}

/// [`generate`] with the `.auth` files stamped `time` (seconds since 1970, UTC).
pub fn generate_at(dir: &Path, name: &str, time: u64) -> Result<KeySet> {
    if name.is_empty() || name.contains(['/', '\\', '\n']) {
        bail!("{name:?} cannot name a key: use letters, digits, spaces and dashes");
    }
    if dir.exists()
        && std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} exists already and is not empty; move it away first (keys are never overwritten)",
            dir.display()
        );
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;

    let mut random = [0u8; 16];
    getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    let owner = uuid::Builder::from_random_bytes(random).into_uuid();
    let set = KeySet {
        dir: dir.to_path_buf(),
        owner,
        kind: KeyKind::Configured,
    };
    for role in Role::ALL {
        make_key(&set.private_key(role))?;
        let subject = format!("/CN={name} Secure Boot {}/", role.title());
        openssl(
            Command::new("openssl")
                .args(["req", "-new", "-x509", "-sha256", "-days", VALID_DAYS])
                .args(["-subj", &subject, "-key"])
                .arg(set.private_key(role))
                .arg("-out")
                .arg(set.certificate(role)),
            "make a certificate",
        )?;
        let der = openssl(
            Command::new("openssl")
                .args(["x509", "-outform", "DER", "-in"])
                .arg(set.certificate(role)),
            "read the certificate",
        )?;
        std::fs::write(set.signature_list(role), lists::signature_list(owner, &der))
            .with_context(|| format!("cannot write {}", set.signature_list(role).display()))?;
    }
    for role in Role::ALL {
        let signer = role.update_signer();
        let auth = lists::signed_update(
            role,
            &set.signature_list(role),
            owner,
            time,
            (&set.private_key(signer), &set.certificate(signer)),
        )?;
        std::fs::write(set.update(role), auth)
            .with_context(|| format!("cannot write {}", set.update(role).display()))?;
    }
    set.add_pcr_key()?;
    // Written last: a folder with it is complete ([`KeySet::development`] relies on that).
    std::fs::write(dir.join(OWNER_FILE), format!("{owner}\n"))
        .with_context(|| format!("cannot write {}", dir.join(OWNER_FILE).display()))?;
    Ok(set)
}

/// An RSA-2048 private key written to `path` with mode 0600 from the start.
fn make_key(path: &Path) -> Result<()> {
    let pem = openssl(
        Command::new("openssl").args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ]),
        "make a key",
    )?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(&pem)
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Runs an openssl command, returning its standard output.
fn openssl(cmd: &mut Command, what: &str) -> Result<Vec<u8>> {
    let out = cmd
        .output()
        .context("cannot run openssl: install Debian's openssl package")?;
    if !out.status.success() {
        bail!(
            "openssl could not {what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_set_opens_and_openssl_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("secure-boot");
        let made = generate(&keys, "Test").unwrap();
        let opened = KeySet::open(&keys).unwrap();
        assert_eq!(opened.owner(), made.owner());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&keys), 0o700);
        for role in Role::ALL {
            assert_eq!(mode(&opened.private_key(role)), 0o600, "{role:?}");
            // Each private key matches its certificate, as openssl sees them.
            let public = |args: &[&str], file: PathBuf| {
                let out = Command::new("openssl")
                    .args(args)
                    .arg(file)
                    .output()
                    .unwrap();
                assert!(out.status.success());
                out.stdout
            };
            assert_eq!(
                public(&["pkey", "-pubout", "-in"], opened.private_key(role)),
                public(
                    &["x509", "-noout", "-pubkey", "-in"],
                    opened.certificate(role)
                ),
            );
            let subject = public(
                &["x509", "-noout", "-subject", "-in"],
                opened.certificate(role),
            );
            assert!(
                String::from_utf8_lossy(&subject)
                    .contains(&format!("Test Secure Boot {}", role.title())),
                "{}",
                String::from_utf8_lossy(&subject)
            );
        }
        assert!(
            generate(&keys, "Test").is_err(),
            "an existing set is never overwritten"
        );
    }

    #[test]
    fn a_readable_db_key_and_an_incomplete_folder_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys = generate(&dir.path().join("sb"), "Test").unwrap();
        std::fs::set_permissions(
            keys.private_key(Role::Db),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let err = keys.signer(0).unwrap_err().to_string();
        assert!(
            err.contains("mode 0644") && err.contains("chmod 600"),
            "{err}"
        );

        // PK.key and KEK.key may go offline; a missing .auth is refused, naming it.
        std::fs::remove_file(keys.private_key(Role::Pk)).unwrap();
        std::fs::remove_file(keys.private_key(Role::Kek)).unwrap();
        assert!(KeySet::open(keys.dir()).is_ok());
        std::fs::remove_file(keys.update(Role::Kek)).unwrap();
        let err = KeySet::open(keys.dir()).unwrap_err().to_string();
        assert!(
            err.contains("KEK.auth") && err.contains("keygen --secure-boot"),
            "{err}"
        );
    }

    #[test]
    fn a_set_without_the_pcr_key_is_refused_until_one_is_added() {
        let dir = tempfile::tempdir().unwrap();
        let keys = generate(&dir.path().join("sb"), "Test").unwrap();
        let signer = keys.pcr_signer().unwrap();
        assert_eq!(mode_of(&keys.pcr_key()), 0o600);
        std::fs::remove_file(keys.pcr_key()).unwrap();
        std::fs::remove_file(keys.pcr_public()).unwrap();
        let err = keys.pcr_signer().unwrap_err().to_string();
        assert!(
            err.contains("tpm2-pcr.key") && err.contains("keygen --secure-boot --dir"),
            "{err}"
        );
        assert!(keys.add_pcr_key().unwrap());
        assert!(!keys.add_pcr_key().unwrap(), "an existing key is kept");
        assert_ne!(
            keys.pcr_signer().unwrap().public,
            signer.public,
            "a new key was made"
        );
    }

    fn mode_of(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_development_set_is_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = KeySet::development(dir.path()).unwrap();
        let b = KeySet::development(dir.path()).unwrap();
        assert_eq!(a.owner(), b.owner());
        assert_eq!(a.kind(), KeyKind::Development);
    }
}
