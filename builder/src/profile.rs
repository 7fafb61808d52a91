//! Profiles: the TOML files that describe an image, their `include` chain, and validation.
//!
//! A profile is read in three steps. Each file is parsed on its own into a `Layer`, with
//! every value remembering the file and line it came from (unknown keys and wrong types are
//! refused here by the TOML deserializer, which reports the line). Layers are then merged
//! base first: tables merge key by key, a later value replaces an earlier one, and lists
//! extend (so a variant adds packages or modules without restating its base's). Finally the
//! merged layer is resolved into a [`Profile`]: defaults filled in, sizes and names checked,
//! relative paths made absolute, and every problem reported as `file:line: field: what to do`.
//!
//! `docs/PROFILES.md` documents the schema for people; this module is its implementation.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crust_format::manifest::Filesystem;
use crust_format::user_data::{Permission, Source};
use crust_format::version::{check_name, check_version};
use crust_format::volume::{self, Disks, Format, INSTANCE_STORES, VolumeSpec};
use serde::Deserialize;
use toml::Spanned;

use crate::secureboot::Enroll;
use crate::service::{ServiceDecl, ServiceToml};
use crust_format::sealed::{Encryption, WithoutTpm};

/// Where a value was written: file and 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The profile file.
    pub file: Arc<Path>,
    /// The line in it.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A value together with the place it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// Where it came from.
    pub at: Origin,
}

impl<T> std::ops::Deref for Located<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// A profile that cannot be used, with the place and field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file cannot be read.
    #[error("{path}: cannot read profile: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Invalid TOML, an unknown key or a wrong type (the message carries the line).
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The deserializer's message, with line, column and the offending text.
        message: String,
    },
    /// A value that parses but cannot work.
    #[error("{at}: {field}: {message}")]
    Invalid {
        /// Where the value was written.
        at: Origin,
        /// The field, dotted (`disk.root`).
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A required field that no file of the chain sets.
    #[error("{path}: {field} is not set (set it in this profile or in a profile it includes)")]
    Missing {
        /// The profile that was asked for.
        path: PathBuf,
        /// The field, dotted.
        field: &'static str,
    },
    /// `include` goes round in a circle or too deep.
    #[error("{at}: include: {message}")]
    Include {
        /// The include line.
        at: Origin,
        /// What is wrong.
        message: String,
    },
}

/// Where the kernel comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// A Debian package (a metapackage such as `linux-image-cloud-amd64` is followed to the
    /// versioned image package it depends on).
    Package(String),
    /// A kernel image and its module tree on this machine (`modules.dep` from `depmod`).
    Local {
        /// The bzImage (`/boot/vmlinuz-…`).
        image: PathBuf,
        /// The module tree (`/lib/modules/<release>`).
        modules: PathBuf,
    },
}

/// A file copied into the root file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// The file on this machine (relative paths are relative to the profile that names it).
    pub source: PathBuf,
    /// Absolute path in the image.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Where it was declared.
    pub at: Origin,
}

/// Output formats of a build (made by [`crate::formats`]; names as in profiles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
pub enum OutputFormat {
    /// A sparse raw disk image, `image.raw` (always made: the others derive from it).
    #[serde(rename = "raw")]
    Raw,
    /// The raw image compressed with zstd, `image.raw.zst`.
    #[serde(rename = "raw.zst")]
    RawZst,
    /// QEMU's qcow2, `image.qcow2`.
    #[serde(rename = "qcow2")]
    Qcow2,
    /// A streamOptimized VMDK (VMware, AWS VM Import), `image.vmdk`.
    #[serde(rename = "vmdk")]
    Vmdk,
    /// A fixed VHD (Azure), `image.vhd`.
    #[serde(rename = "vhd")]
    Vhd,
    /// `disk.raw` in a gzipped tar, as GCE imports, `image.tar.gz`.
    #[serde(rename = "gce")]
    Gce,
    /// A hybrid UEFI installer ISO (CD, BMC virtual media, `dd` onto a USB stick),
    /// `installer.iso` ([`crate::installer`]).
    #[serde(rename = "iso")]
    Iso,
    /// What a network boot serves: `netboot.efi`, `root.img`, `verity.img`.
    #[serde(rename = "netboot")]
    Netboot,
}

/// `[secure-boot]`: sign systemd-boot and the UKIs with a db key, and put the key set's
/// enrolment files on the ESP ([`crate::secureboot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecureBoot {
    /// The key folder made by `cargo xtask keygen --secure-boot`; `None` means the
    /// development key set.
    pub keys: Option<Located<PathBuf>>,
    /// What systemd-boot does with the keys on a machine in setup mode.
    pub enroll: Located<Enroll>,
    /// Where the table was declared.
    pub at: Origin,
}

/// `[state]`: whether the state partition (`/var`) is encrypted with a key sealed to the
/// TPM ([`crate::measure`], docs/SECURE-BOOT.md), and what a host does without the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateTable {
    /// `tpm` (default with `[secure-boot]`) or `none` (default without).
    pub encryption: Located<Encryption>,
    /// `refuse` (default) or `tmpfs`.
    pub without_tpm: Located<WithoutTpm>,
    /// The owner's X25519 public key (PEM) the volume key is also encrypted to, for
    /// recovery; `None`: no recovery copy (the build warns).
    pub recovery_key: Option<Located<PathBuf>>,
}

/// `[config]`: what user-data may be and do on the image's hosts
/// ([`crust_format::user_data`]), and the image's own default user-data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfigPolicy {
    /// The sources the init tries, in order.
    pub sources: Located<Vec<Source>>,
    /// Whether user-data needs a signature.
    pub signed: Located<bool>,
    /// Public key files (`.pub`) that may sign user-data; empty means the image's signing
    /// key.
    pub keys: Vec<Located<PathBuf>>,
    /// What user-data may do beyond host settings.
    pub allow: Located<Vec<Permission>>,
    /// The image's default user-data (`/usr/lib/crust/config.toml`), if the profile has one.
    pub default: Option<Located<PathBuf>>,
}

/// A resolved profile: everything a build needs to know, checked.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Profile name (file stem, e.g. `qemu`).
    pub name: String,
    /// The profile file asked for.
    pub path: PathBuf,
    /// Every file read, the asked-for profile first.
    pub files: Vec<PathBuf>,
    /// Image name.
    pub image_name: Located<String>,
    /// Image version.
    pub image_version: Located<String>,
    /// Debian suite (e.g. `bookworm`).
    pub suite: Located<String>,
    /// Debian mirror for the main archive.
    pub mirror: Located<String>,
    /// Debian mirror for security updates; `None` to leave them out.
    pub security_mirror: Option<Located<String>>,
    /// Archive components.
    pub components: Vec<Located<String>>,
    /// The kernel.
    pub kernel: Located<KernelSource>,
    /// Kernel modules wanted by name (their dependencies are added).
    pub modules: Vec<Located<String>>,
    /// Extra kernel command line words.
    pub cmdline: Vec<Located<String>>,
    /// Seconds the kernel waits after a panic before rebooting.
    pub panic_reboot: Located<u32>,
    /// The Debian package providing systemd-boot and its UKI stub.
    pub boot_package: Located<String>,
    /// Debian packages of the root file system (dependencies are added).
    pub packages: Vec<Located<String>>,
    /// Files copied into the root file system.
    pub files_in_root: Vec<FileSpec>,
    /// Extra path patterns left out of the root (besides docs, man pages and locales).
    pub exclude: Vec<Located<String>>,
    /// Root file system type.
    pub filesystem: Located<Filesystem>,
    /// zstd level for the root file system.
    pub compression_level: Located<i32>,
    /// ESP size in bytes.
    pub esp_size: Located<u64>,
    /// Root partition size (per slot) in bytes.
    pub root_size: Located<u64>,
    /// Verity partition size (per slot) in bytes.
    pub verity_size: Located<u64>,
    /// Initial state partition size in bytes (it grows to fill the disk on first boot).
    pub state_size: Located<u64>,
    /// The signing key (PKCS#8 PEM); `None` means the development key.
    pub signing_key: Option<Located<PathBuf>>,
    /// Secure Boot signing (`[secure-boot]`); `None` when the profile does not ask for it.
    pub secure_boot: Option<SecureBoot>,
    /// The state partition's encryption (`[state]`).
    pub state: StateTable,
    /// What user-data may be and do (`[config]`).
    pub config: HostConfigPolicy,
    /// Output formats.
    pub outputs: Vec<Located<OutputFormat>>,
    /// Services (containers), in start order; the admin container among them when
    /// `[admin] enabled = true`.
    pub services: Vec<ServiceDecl>,
    /// Data volumes (`[[volume]]`), in the order written, base profiles' first.
    pub volumes: Vec<Located<VolumeSpec>>,
}

impl Profile {
    /// Reads the profile at `path`, following its includes.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        Self::load_with(path, None)
    }

    /// Reads a profile whose file `path` holds `text` (the file itself need not exist; its
    /// folder is where includes and relative paths are found), following its includes
    /// from disk.
    pub fn from_text(path: &Path, text: &str) -> Result<Self, ProfileError> {
        Self::load_with(path, Some(text))
    }

    fn load_with(path: &Path, text: Option<&str>) -> Result<Self, ProfileError> {
        let mut chain = Vec::new();
        let mut seen = BTreeSet::new();
        let mut next = Some((path.to_path_buf(), None::<Origin>));
        while let Some((file, included_at)) = next.take() {
            let canonical = match (text, &included_at) {
                // The profile given as text: its name, as it may not exist.
                (Some(_), None) => {
                    std::path::absolute(&file).map_err(|source| ProfileError::Read {
                        path: file.clone(),
                        source,
                    })?
                }
                _ => file.canonicalize().map_err(|source| ProfileError::Read {
                    path: file.clone(),
                    source,
                })?,
            };
            if let Some(at) = &included_at {
                if !seen.insert(canonical.clone()) {
                    return Err(ProfileError::Include {
                        at: at.clone(),
                        message: format!("{} is already part of this chain", file.display()),
                    });
                }
                if chain.len() >= 8 {
                    return Err(ProfileError::Include {
                        at: at.clone(),
                        message: "more than 8 levels of include".into(),
                    });
                }
            } else {
                seen.insert(canonical);
            }
            let layer = match (text, &included_at) {
                (Some(text), None) => Layer::parse(&file, text)?,
                _ => Layer::read(&file)?,
            };
            if let Some(include) = &layer.include {
                let base_dir = file.parent().unwrap_or(Path::new("."));
                next = Some((base_dir.join(&include.value), Some(include.at.clone())));
            }
            chain.push(layer);
        }
        let files = chain.iter().map(|l| l.path.clone()).collect();
        // Merge base first: the last file of the chain is the root of the inheritance.
        let mut merged = Layer::default();
        for layer in chain.into_iter().rev() {
            merged = merged.merge(layer);
        }
        resolve(path, files, merged)
    }

    /// The lock file that pins this profile's packages: `<dir>/<name>.lock`.
    pub fn lock_path(&self) -> PathBuf {
        self.path.with_extension("lock")
    }

    /// The directory holding the profile.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// The kernel command line: Crust's fixed part, then the profile's words.
    pub fn kernel_cmdline(&self) -> String {
        let mut words = vec![format!("panic={}", self.panic_reboot.value)];
        words.extend(self.cmdline.iter().map(|w| w.value.clone()));
        words.join(" ")
    }
}

// ---------------------------------------------------------------------------------------
// Layers: one file, every leaf located.

/// One parsed profile file.
#[derive(Debug, Default)]
struct Layer {
    path: PathBuf,
    include: Option<Located<String>>,
    image: ImageLayer,
    debian: DebianLayer,
    kernel: KernelLayer,
    boot: BootLayer,
    root: RootLayer,
    disk: DiskLayer,
    signing: SigningLayer,
    secure_boot: SecureBootLayer,
    state: StateLayer,
    config: ConfigLayer,
    output: OutputLayer,
    admin: AdminLayer,
    services: Vec<Located<ServiceToml>>,
    volumes: Vec<Located<raw::Volume>>,
}

type Opt<T> = Option<Located<T>>;
type List<T> = Vec<Located<T>>;

#[derive(Debug, Default)]
struct ImageLayer {
    name: Opt<String>,
    version: Opt<String>,
}

#[derive(Debug, Default)]
struct DebianLayer {
    suite: Opt<String>,
    mirror: Opt<String>,
    security_mirror: Opt<String>,
    components: List<String>,
}

#[derive(Debug, Default)]
struct KernelLayer {
    package: Opt<String>,
    image: Opt<PathBuf>,
    modules_dir: Opt<PathBuf>,
    modules: List<String>,
    cmdline: List<String>,
    panic_reboot: Opt<u32>,
}

#[derive(Debug, Default)]
struct BootLayer {
    package: Opt<String>,
}

#[derive(Debug, Default)]
struct RootLayer {
    packages: List<String>,
    files: Vec<FileSpec>,
    exclude: List<String>,
    filesystem: Opt<String>,
    compression_level: Opt<i32>,
}

#[derive(Debug, Default)]
struct DiskLayer {
    esp: Opt<u64>,
    root: Opt<u64>,
    verity: Opt<u64>,
    state: Opt<u64>,
}

#[derive(Debug, Default)]
struct SigningLayer {
    key: Opt<PathBuf>,
}

#[derive(Debug, Default)]
struct SecureBootLayer {
    /// Where a `[secure-boot]` table was written (its presence turns signing on).
    declared: Option<Origin>,
    keys: Opt<PathBuf>,
    enroll: Opt<Enroll>,
}

#[derive(Debug, Default)]
struct StateLayer {
    encryption: Opt<String>,
    without_tpm: Opt<String>,
    recovery_key: Opt<PathBuf>,
}

/// `[config]` of one file. Its lists replace a base's instead of extending them: a
/// variant that narrows what user-data may do must be able to.
#[derive(Debug, Default)]
struct ConfigLayer {
    sources: Opt<List<String>>,
    signed: Opt<bool>,
    keys: List<PathBuf>,
    keys_set: bool,
    allow: Opt<List<String>>,
    default: Opt<PathBuf>,
}

#[derive(Debug, Default)]
struct OutputLayer {
    formats: List<OutputFormat>,
}

#[derive(Debug, Default)]
struct AdminLayer {
    enabled: Opt<bool>,
}

// The serde shapes of a file. Every leaf is `Spanned` so its line can be reported.
mod raw {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        pub include: Option<Spanned<String>>,
        #[serde(default)]
        pub image: Image,
        #[serde(default)]
        pub debian: Debian,
        #[serde(default)]
        pub kernel: Kernel,
        #[serde(default)]
        pub boot: Boot,
        #[serde(default)]
        pub root: Root,
        #[serde(default)]
        pub disk: Disk,
        #[serde(default)]
        pub signing: Signing,
        #[serde(default, rename = "secure-boot")]
        pub secure_boot: Option<Spanned<SecureBoot>>,
        #[serde(default)]
        pub state: State,
        #[serde(default)]
        pub config: Config,
        #[serde(default)]
        pub output: Output,
        #[serde(default)]
        pub admin: Admin,
        #[serde(default)]
        pub service: Vec<Spanned<ServiceToml>>,
        #[serde(default)]
        pub volume: Vec<Spanned<Volume>>,
    }

    /// A `[[volume]]` table as written (the user-data schema's, docs/PROFILES.md).
    #[derive(Deserialize, Debug, Clone)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    pub struct Volume {
        pub name: String,
        pub disk: Option<OneOrMany>,
        pub serial: Option<OneOrMany>,
        pub wwn: Option<OneOrMany>,
        pub label: Option<String>,
        pub disks: Option<String>,
        pub filesystem: Option<String>,
        #[serde(default)]
        pub mount_options: Vec<String>,
        pub format: Option<String>,
    }

    /// One string or a list of them.
    #[derive(Deserialize, Debug, Clone)]
    #[serde(untagged)]
    pub enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Admin {
        pub enabled: Option<Spanned<bool>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Image {
        pub name: Option<Spanned<String>>,
        pub version: Option<Spanned<String>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    pub struct Debian {
        pub suite: Option<Spanned<String>>,
        pub mirror: Option<Spanned<String>>,
        pub security_mirror: Option<Spanned<String>>,
        #[serde(default)]
        pub components: Vec<Spanned<String>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    pub struct Kernel {
        pub package: Option<Spanned<String>>,
        pub image: Option<Spanned<PathBuf>>,
        pub modules_dir: Option<Spanned<PathBuf>>,
        #[serde(default)]
        pub modules: Vec<Spanned<String>>,
        #[serde(default)]
        pub cmdline: Vec<Spanned<String>>,
        pub panic_reboot: Option<Spanned<u32>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Boot {
        pub package: Option<Spanned<String>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    pub struct Root {
        #[serde(default)]
        pub packages: Vec<Spanned<String>>,
        #[serde(default)]
        pub files: Vec<Spanned<FileEntry>>,
        #[serde(default)]
        pub exclude: Vec<Spanned<String>>,
        pub filesystem: Option<Spanned<String>>,
        pub compression_level: Option<Spanned<i32>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct FileEntry {
        pub source: PathBuf,
        pub path: String,
        pub mode: Option<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Disk {
        pub esp: Option<Spanned<Size>>,
        pub root: Option<Spanned<Size>>,
        pub verity: Option<Spanned<Size>>,
        pub state: Option<Spanned<Size>>,
    }

    /// A size: a byte count, or a string such as `"512MiB"`.
    #[derive(Deserialize)]
    #[serde(untagged)]
    pub enum Size {
        Bytes(u64),
        Text(String),
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Signing {
        pub key: Option<Spanned<PathBuf>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct SecureBoot {
        pub keys: Option<Spanned<PathBuf>>,
        pub enroll: Option<Spanned<Enroll>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    pub struct State {
        pub encryption: Option<Spanned<String>>,
        pub without_tpm: Option<Spanned<String>>,
        pub recovery_key: Option<Spanned<PathBuf>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Config {
        pub sources: Option<Spanned<Vec<Spanned<String>>>>,
        pub signed: Option<Spanned<bool>>,
        pub keys: Option<Vec<Spanned<PathBuf>>>,
        pub allow: Option<Spanned<Vec<Spanned<String>>>>,
        pub default: Option<Spanned<PathBuf>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Output {
        #[serde(default)]
        pub formats: Vec<Spanned<OutputFormat>>,
    }
}

/// Turns byte offsets into line numbers for one file.
struct Locator {
    file: Arc<Path>,
    line_starts: Vec<usize>,
}

impl Locator {
    fn new(file: Arc<Path>, text: &str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { file, line_starts }
    }

    fn origin(&self, offset: usize) -> Origin {
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        };
        Origin {
            file: self.file.clone(),
            line,
        }
    }

    fn locate<T>(&self, s: Spanned<T>) -> Located<T> {
        let at = self.origin(s.span().start);
        Located {
            value: s.into_inner(),
            at,
        }
    }

    fn opt<T>(&self, s: Option<Spanned<T>>) -> Opt<T> {
        s.map(|s| self.locate(s))
    }

    fn list<T>(&self, v: Vec<Spanned<T>>) -> List<T> {
        v.into_iter().map(|s| self.locate(s)).collect()
    }
}

/// The most a profile or default user-data file may hold: they are a few KiB, and a path
/// that names `/dev/zero` or a FIFO must not make the builder read forever.
const MAX_TEXT_FILE: u64 = 1 << 20;

/// Reads a small text file: a regular file of at most [`MAX_TEXT_FILE`] bytes.
fn read_small_text(path: &Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    // Asked before opening: opening a FIFO would already wait for a writer.
    if !std::fs::metadata(path)?.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "not a regular file (a device, FIFO or folder)",
        ));
    }
    let mut text = String::new();
    let file = std::fs::File::open(path)?;
    file.take(MAX_TEXT_FILE + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_TEXT_FILE {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("larger than {} KiB", MAX_TEXT_FILE >> 10),
        ));
    }
    Ok(text)
}

impl Layer {
    fn read(path: &Path) -> Result<Self, ProfileError> {
        let text = read_small_text(path).map_err(|source| ProfileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// The layer `text` describes, as the file `path` (for messages and relative paths).
    fn parse(path: &Path, text: &str) -> Result<Self, ProfileError> {
        let raw: raw::File = toml::from_str(text).map_err(|e| ProfileError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let file: Arc<Path> = Arc::from(path);
        let loc = Locator::new(file.clone(), text);
        let base_dir = path.parent().unwrap_or(Path::new("."));

        let size = |field: &str, s: Option<Spanned<raw::Size>>| -> Result<Opt<u64>, ProfileError> {
            let Some(s) = s else { return Ok(None) };
            let s = loc.locate(s);
            let bytes = match &s.value {
                raw::Size::Bytes(n) => *n,
                raw::Size::Text(t) => parse_size(t).map_err(|message| ProfileError::Invalid {
                    at: s.at.clone(),
                    field: format!("disk.{field}"),
                    message,
                })?,
            };
            Ok(Some(Located {
                value: bytes,
                at: s.at,
            }))
        };
        let relative = |p: Opt<PathBuf>| {
            p.map(|p| Located {
                value: base_dir.join(&p.value),
                at: p.at,
            })
        };

        let mut files = Vec::new();
        for entry in raw.root.files {
            let entry = loc.locate(entry);
            let mode = match &entry.value.mode {
                None => 0o644,
                Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| ProfileError::Invalid {
                        at: entry.at.clone(),
                        field: "root.files.mode".into(),
                        message: format!("{m:?} is not an octal mode such as \"0644\""),
                    })?,
            };
            files.push(FileSpec {
                source: base_dir.join(&entry.value.source),
                path: entry.value.path.clone(),
                mode,
                at: entry.at,
            });
        }

        Ok(Layer {
            path: path.to_path_buf(),
            include: loc.opt(raw.include),
            image: ImageLayer {
                name: loc.opt(raw.image.name),
                version: loc.opt(raw.image.version),
            },
            debian: DebianLayer {
                suite: loc.opt(raw.debian.suite),
                mirror: loc.opt(raw.debian.mirror),
                security_mirror: loc.opt(raw.debian.security_mirror),
                components: loc.list(raw.debian.components),
            },
            kernel: KernelLayer {
                package: loc.opt(raw.kernel.package),
                image: relative(loc.opt(raw.kernel.image)),
                modules_dir: relative(loc.opt(raw.kernel.modules_dir)),
                modules: loc.list(raw.kernel.modules),
                cmdline: loc.list(raw.kernel.cmdline),
                panic_reboot: loc.opt(raw.kernel.panic_reboot),
            },
            boot: BootLayer {
                package: loc.opt(raw.boot.package),
            },
            root: RootLayer {
                packages: loc.list(raw.root.packages),
                files,
                exclude: loc.list(raw.root.exclude),
                filesystem: loc.opt(raw.root.filesystem),
                compression_level: loc.opt(raw.root.compression_level),
            },
            disk: DiskLayer {
                esp: size("esp", raw.disk.esp)?,
                root: size("root", raw.disk.root)?,
                verity: size("verity", raw.disk.verity)?,
                state: size("state", raw.disk.state)?,
            },
            signing: SigningLayer {
                key: relative(loc.opt(raw.signing.key)),
            },
            secure_boot: match raw.secure_boot {
                Some(table) => {
                    let declared = loc.origin(table.span().start);
                    let table = table.into_inner();
                    SecureBootLayer {
                        declared: Some(declared),
                        keys: relative(loc.opt(table.keys)),
                        enroll: loc.opt(table.enroll),
                    }
                }
                None => SecureBootLayer::default(),
            },
            state: StateLayer {
                encryption: loc.opt(raw.state.encryption),
                without_tpm: loc.opt(raw.state.without_tpm),
                recovery_key: relative(loc.opt(raw.state.recovery_key)),
            },
            config: ConfigLayer {
                sources: raw.config.sources.map(|list| {
                    let list = loc.locate(list);
                    Located {
                        value: loc.list(list.value),
                        at: list.at,
                    }
                }),
                signed: loc.opt(raw.config.signed),
                keys_set: raw.config.keys.is_some(),
                keys: raw
                    .config
                    .keys
                    .map(|keys| {
                        keys.into_iter()
                            .map(|k| {
                                let k = loc.locate(k);
                                Located {
                                    value: base_dir.join(&k.value),
                                    at: k.at,
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                allow: raw.config.allow.map(|list| {
                    let list = loc.locate(list);
                    Located {
                        value: loc.list(list.value),
                        at: list.at,
                    }
                }),
                default: relative(loc.opt(raw.config.default)),
            },
            output: OutputLayer {
                formats: loc.list(raw.output.formats),
            },
            admin: AdminLayer {
                enabled: loc.opt(raw.admin.enabled),
            },
            services: raw
                .service
                .into_iter()
                .map(|s| {
                    let mut s = loc.locate(s);
                    s.value.anchor(base_dir);
                    s
                })
                .collect(),
            volumes: loc.list(raw.volume),
        })
    }

    /// `self` is the base, `over` the including file.
    fn merge(self, over: Layer) -> Layer {
        fn list<T>(mut base: Vec<T>, more: Vec<T>) -> Vec<T> {
            base.extend(more);
            base
        }
        // A kernel given as a local tree replaces a package from the base, and vice versa.
        let (package, image, modules_dir) = if over.kernel.package.is_some() {
            (over.kernel.package, None, None)
        } else if over.kernel.image.is_some() || over.kernel.modules_dir.is_some() {
            (None, over.kernel.image, over.kernel.modules_dir)
        } else {
            (
                self.kernel.package,
                self.kernel.image,
                self.kernel.modules_dir,
            )
        };
        Layer {
            path: over.path,
            include: None,
            image: ImageLayer {
                name: over.image.name.or(self.image.name),
                version: over.image.version.or(self.image.version),
            },
            debian: DebianLayer {
                suite: over.debian.suite.or(self.debian.suite),
                mirror: over.debian.mirror.or(self.debian.mirror),
                security_mirror: over.debian.security_mirror.or(self.debian.security_mirror),
                components: list(self.debian.components, over.debian.components),
            },
            kernel: KernelLayer {
                package,
                image,
                modules_dir,
                modules: list(self.kernel.modules, over.kernel.modules),
                cmdline: list(self.kernel.cmdline, over.kernel.cmdline),
                panic_reboot: over.kernel.panic_reboot.or(self.kernel.panic_reboot),
            },
            boot: BootLayer {
                package: over.boot.package.or(self.boot.package),
            },
            root: RootLayer {
                packages: list(self.root.packages, over.root.packages),
                files: list(self.root.files, over.root.files),
                exclude: list(self.root.exclude, over.root.exclude),
                filesystem: over.root.filesystem.or(self.root.filesystem),
                compression_level: over.root.compression_level.or(self.root.compression_level),
            },
            disk: DiskLayer {
                esp: over.disk.esp.or(self.disk.esp),
                root: over.disk.root.or(self.disk.root),
                verity: over.disk.verity.or(self.disk.verity),
                state: over.disk.state.or(self.disk.state),
            },
            signing: SigningLayer {
                key: over.signing.key.or(self.signing.key),
            },
            secure_boot: SecureBootLayer {
                declared: over.secure_boot.declared.or(self.secure_boot.declared),
                keys: over.secure_boot.keys.or(self.secure_boot.keys),
                enroll: over.secure_boot.enroll.or(self.secure_boot.enroll),
            },
            state: StateLayer {
                encryption: over.state.encryption.or(self.state.encryption),
                without_tpm: over.state.without_tpm.or(self.state.without_tpm),
                recovery_key: over.state.recovery_key.or(self.state.recovery_key),
            },
            config: ConfigLayer {
                sources: over.config.sources.or(self.config.sources),
                signed: over.config.signed.or(self.config.signed),
                keys_set: over.config.keys_set || self.config.keys_set,
                keys: if over.config.keys_set {
                    over.config.keys
                } else {
                    self.config.keys
                },
                allow: over.config.allow.or(self.config.allow),
                default: over.config.default.or(self.config.default),
            },
            output: OutputLayer {
                formats: list(self.output.formats, over.output.formats),
            },
            admin: AdminLayer {
                enabled: over.admin.enabled.or(self.admin.enabled),
            },
            services: list(self.services, over.services),
            volumes: list(self.volumes, over.volumes),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Resolution: defaults and checks.

const MIB: u64 = 1 << 20;
/// Smallest ESP: FAT32 needs 65525 clusters, about 33 MiB with 512-byte clusters.
const MIN_ESP: u64 = 40 * MIB;
/// Largest ESP the FAT32 writer supports.
const MAX_ESP: u64 = 32 << 30;

/// The merged layer, checked table by table, with defaults filled in.
fn resolve(path: &Path, files: Vec<PathBuf>, l: Layer) -> Result<Profile, ProfileError> {
    let d = Defaults::new(path);
    let (image_name, image_version) = resolve_image(l.image, &d)?;
    let debian = resolve_debian(l.debian, &d)?;
    let kernel = resolve_kernel(l.kernel, &d)?;
    let root = resolve_root(l.root, l.boot, &d)?;
    let disk = resolve_disk(l.disk, &d)?;
    let signing_key = resolve_signing(l.signing)?;
    let secure_boot = resolve_secure_boot(l.secure_boot)?;
    let config = resolve_config(l.config, secure_boot.as_ref(), &d)?;
    let state = resolve_state(l.state, secure_boot.as_ref(), &d)?;
    let outputs = resolve_outputs(l.output, &d);
    let services = crate::service::resolve(
        l.services,
        l.admin.enabled.as_ref().filter(|e| e.value).map(|e| &e.at),
    )?;
    let volumes = resolve_volumes(l.volumes, &services)?;
    Ok(Profile {
        name: path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("profile")
            .to_owned(),
        path: path.to_path_buf(),
        files,
        image_name,
        image_version,
        suite: debian.suite,
        mirror: debian.mirror,
        security_mirror: debian.security_mirror,
        components: debian.components,
        kernel: kernel.source,
        modules: kernel.modules,
        cmdline: kernel.cmdline,
        panic_reboot: kernel.panic_reboot,
        boot_package: root.boot_package,
        packages: root.packages,
        files_in_root: root.files,
        exclude: root.exclude,
        filesystem: root.filesystem,
        compression_level: root.compression_level,
        esp_size: disk.esp,
        root_size: disk.root,
        verity_size: disk.verity,
        state_size: disk.state,
        signing_key,
        secure_boot,
        state,
        config,
        outputs,
        services,
        volumes,
    })
}

/// `[[volume]]`: each table checked as user-data's are (one way of naming the disks, every
/// value's form), names unique, and every volume a service mounts declared. A volume may
/// name no disk: the image then leaves the disk to user-data (which replaces the table).
fn resolve_volumes(
    raw: Vec<Located<raw::Volume>>,
    services: &[ServiceDecl],
) -> Result<Vec<Located<VolumeSpec>>, ProfileError> {
    let mut volumes: Vec<Located<VolumeSpec>> = Vec::new();
    for v in raw {
        let at = v.at.clone();
        let spec =
            volume_spec(v.value).map_err(|(field, message)| invalid(&at, &field, message))?;
        if let Some(first) = volumes.iter().find(|o| o.name == spec.name) {
            return Err(invalid(
                &at,
                &format!("volume {}: name", spec.name),
                format!("declared twice (first at {})", first.at),
            ));
        }
        volumes.push(Located { value: spec, at });
    }
    for s in services {
        for name in &s.volumes {
            if !volumes.iter().any(|v| &v.name == name) {
                let declared: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
                return Err(invalid(
                    &s.at,
                    &format!("service {}: mounts.volume", s.name),
                    format!(
                        "no [[volume]] is named {name:?} (declared: {})",
                        if declared.is_empty() {
                            "none".into()
                        } else {
                            declared.join(", ")
                        }
                    ),
                ));
            }
        }
    }
    Ok(volumes)
}

/// One table as a [`VolumeSpec`]; the error is the key and what is wrong.
fn volume_spec(v: raw::Volume) -> Result<VolumeSpec, (String, String)> {
    let key = |name: &str, k: &str| format!("volume {name}: {k}");
    let n = v.name.clone();
    let list = |l: raw::OneOrMany| match l {
        raw::OneOrMany::One(s) => vec![s],
        raw::OneOrMany::Many(v) => v,
    };
    let chosen: Vec<&str> = [
        ("disk", v.disk.is_some()),
        ("serial", v.serial.is_some()),
        ("wwn", v.wwn.is_some()),
        ("label", v.label.is_some()),
        ("disks", v.disks.is_some()),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(k, _)| *k)
    .collect();
    if chosen.len() > 1 {
        return Err((
            key(&n, chosen[1]),
            format!(
                "name the disks one way: {} or {}, not both",
                chosen[0], chosen[1]
            ),
        ));
    }
    let disks = if let Some(d) = v.disk {
        Disks::ById(
            list(d)
                .iter()
                .map(|p| volume::check_by_id(p))
                .collect::<Result<_, _>>()
                .map_err(|m| (key(&n, "disk"), m))?,
        )
    } else if let Some(s) = v.serial {
        Disks::Serial(list(s))
    } else if let Some(w) = v.wwn {
        Disks::Wwn(list(w))
    } else if let Some(l) = v.label {
        Disks::Label(l)
    } else if let Some(d) = v.disks {
        if d != INSTANCE_STORES {
            return Err((
                key(&n, "disks"),
                format!("{d:?} is not \"{INSTANCE_STORES}\""),
            ));
        }
        Disks::InstanceStores
    } else {
        Disks::Unnamed
    };
    let filesystem = match v.filesystem.as_deref() {
        None => volume::Filesystem::Ext4,
        Some(f) => volume::Filesystem::parse(f)
            .ok_or_else(|| (key(&n, "filesystem"), format!("{f:?} is not ext4 or xfs")))?,
    };
    let format = match v.format.as_deref() {
        None => Format::IfEmpty,
        Some(f) => Format::parse(f)
            .ok_or_else(|| (key(&n, "format"), format!("{f:?} is not if-empty or never")))?,
    };
    let spec = VolumeSpec {
        name: v.name,
        disks,
        filesystem,
        mount_options: v.mount_options,
        format,
    };
    spec.check().map_err(|e| (key(&n, &e.field), e.message))?;
    Ok(spec)
}

/// Where defaults "were written" (the profile asked for, line 1), and the error makers.
struct Defaults {
    path: PathBuf,
    at: Origin,
}

impl Defaults {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            at: Origin {
                file: Arc::from(path),
                line: 1,
            },
        }
    }

    /// A default value, located at the top of the profile asked for.
    fn value<T>(&self, value: T) -> Located<T> {
        Located {
            value,
            at: self.at.clone(),
        }
    }

    fn missing(&self, field: &'static str) -> ProfileError {
        ProfileError::Missing {
            path: self.path.clone(),
            field,
        }
    }
}

fn invalid(at: &Origin, field: &str, message: String) -> ProfileError {
    ProfileError::Invalid {
        at: at.clone(),
        field: field.to_owned(),
        message,
    }
}

/// `[image]`: the name and version, both required.
fn resolve_image(
    l: ImageLayer,
    d: &Defaults,
) -> Result<(Located<String>, Located<String>), ProfileError> {
    let name = l.name.ok_or_else(|| d.missing("image.name"))?;
    check_name(&name).map_err(|e| invalid(&name.at, "image.name", e.to_string()))?;
    let version = l.version.ok_or_else(|| d.missing("image.version"))?;
    check_version(&version).map_err(|e| invalid(&version.at, "image.version", e.to_string()))?;
    Ok((name, version))
}

/// `[debian]`, resolved.
struct DebianTable {
    suite: Located<String>,
    mirror: Located<String>,
    security_mirror: Option<Located<String>>,
    components: Vec<Located<String>>,
}

fn resolve_debian(l: DebianLayer, d: &Defaults) -> Result<DebianTable, ProfileError> {
    let mirror = l
        .mirror
        .unwrap_or_else(|| d.value("http://deb.debian.org/debian".into()));
    for m in [Some(&mirror), l.security_mirror.as_ref()]
        .into_iter()
        .flatten()
    {
        if !(m.starts_with("http://") || m.starts_with("https://")) {
            return Err(invalid(
                &m.at,
                "debian.mirror",
                format!("{:?} is not an http(s) URL", m.value),
            ));
        }
    }
    let mut components = l.components;
    if components.is_empty() {
        components.push(d.value("main".into()));
    }
    Ok(DebianTable {
        suite: l.suite.unwrap_or_else(|| d.value("bookworm".into())),
        mirror,
        security_mirror: l.security_mirror,
        components,
    })
}

/// `[kernel]`, resolved.
struct KernelTable {
    source: Located<KernelSource>,
    modules: Vec<Located<String>>,
    cmdline: Vec<Located<String>>,
    panic_reboot: Located<u32>,
}

fn resolve_kernel(l: KernelLayer, d: &Defaults) -> Result<KernelTable, ProfileError> {
    let source = match (l.package, l.image, l.modules_dir) {
        (Some(p), _, _) => {
            check_package_name(&p, "kernel.package")?;
            Located {
                value: KernelSource::Package(p.value),
                at: p.at,
            }
        }
        (None, Some(image), Some(modules)) => {
            for (what, p) in [("kernel.image", &image), ("kernel.modules-dir", &modules)] {
                if !p.exists() {
                    return Err(invalid(
                        &p.at,
                        what,
                        format!(
                            "{} does not exist; point it at an existing path",
                            p.display()
                        ),
                    ));
                }
            }
            Located {
                value: KernelSource::Local {
                    image: image.value,
                    modules: modules.value,
                },
                at: image.at,
            }
        }
        (None, Some(p), None) | (None, None, Some(p)) => {
            return Err(invalid(
                &p.at,
                "kernel",
                "a local kernel needs both `image` and `modules-dir`".into(),
            ));
        }
        (None, None, None) => return Err(d.missing("kernel.package")),
    };
    for m in &l.modules {
        if m.is_empty()
            || !m
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(
                &m.at,
                "kernel.modules",
                format!("{:?} is not a module name", m.value),
            ));
        }
    }
    for w in &l.cmdline {
        if w.is_empty() || w.contains(char::is_whitespace) {
            return Err(invalid(
                &w.at,
                "kernel.cmdline",
                format!(
                    "{:?} must be one word without spaces (one list item per word)",
                    w.value
                ),
            ));
        }
        if w.starts_with("panic=") {
            return Err(invalid(
                &w.at,
                "kernel.cmdline",
                "set kernel.panic-reboot instead of panic=".into(),
            ));
        }
    }
    let panic_reboot = l.panic_reboot.unwrap_or_else(|| d.value(10));
    if panic_reboot.value == 0 {
        return Err(invalid(
            &panic_reboot.at,
            "kernel.panic-reboot",
            "0 would leave a panicked machine hanging; use 1 or more seconds".into(),
        ));
    }
    Ok(KernelTable {
        source,
        modules: l.modules,
        cmdline: l.cmdline,
        panic_reboot,
    })
}

/// `[root]` and `[boot]`, resolved.
struct RootTable {
    boot_package: Located<String>,
    packages: Vec<Located<String>>,
    files: Vec<FileSpec>,
    exclude: Vec<Located<String>>,
    filesystem: Located<Filesystem>,
    compression_level: Located<i32>,
}

fn resolve_root(l: RootLayer, boot: BootLayer, d: &Defaults) -> Result<RootTable, ProfileError> {
    let boot_package = boot
        .package
        .unwrap_or_else(|| d.value("systemd-boot-efi".into()));
    check_package_name(&boot_package, "boot.package")?;
    let mut packages: Vec<Located<String>> = Vec::new();
    for p in l.packages {
        check_package_name(&p, "root.packages")?;
        if !packages.iter().any(|q| q.value == p.value) {
            packages.push(p);
        }
    }
    for f in &l.files {
        check_root_file(f, "root.files")?;
    }
    let filesystem = match l.filesystem {
        None => d.value(Filesystem::Squashfs),
        Some(f) if f.value == "squashfs" => Located {
            value: Filesystem::Squashfs,
            at: f.at,
        },
        Some(f) => {
            return Err(invalid(
                &f.at,
                "root.filesystem",
                format!("{:?} is not supported; use \"squashfs\"", f.value),
            ));
        }
    };
    let compression_level = l.compression_level.unwrap_or_else(|| d.value(15));
    if !(1..=22).contains(&compression_level.value) {
        return Err(invalid(
            &compression_level.at,
            "root.compression-level",
            format!(
                "{} is not a zstd level; use 1 to 22",
                compression_level.value
            ),
        ));
    }
    Ok(RootTable {
        boot_package,
        packages,
        files: l.files,
        exclude: l.exclude,
        filesystem,
        compression_level,
    })
}

/// A file for the root: an absolute path without `.` or `..`, from an existing file.
fn check_root_file(f: &FileSpec, field: &str) -> Result<(), ProfileError> {
    if !f.path.starts_with('/') || f.path.split('/').any(|c| c == ".." || c == ".") {
        return Err(invalid(
            &f.at,
            &format!("{field}.path"),
            format!("{:?} must be an absolute path without . or ..", f.path),
        ));
    }
    if !f.source.is_file() {
        return Err(invalid(
            &f.at,
            &format!("{field}.source"),
            format!(
                "{} is not a file; paths are relative to the profile that names them",
                f.source.display()
            ),
        ));
    }
    Ok(())
}

/// `[disk]`, resolved: partition sizes.
struct DiskTable {
    esp: Located<u64>,
    root: Located<u64>,
    verity: Located<u64>,
    state: Located<u64>,
}

fn resolve_disk(l: DiskLayer, d: &Defaults) -> Result<DiskTable, ProfileError> {
    let size = |v: Opt<u64>, default: u64, field: &str, min: u64, max: u64| {
        let v = v.unwrap_or_else(|| d.value(default));
        if !v.value.is_multiple_of(MIB) {
            return Err(invalid(
                &v.at,
                field,
                format!(
                    "{} bytes is not a whole number of MiB (partitions are 1 MiB aligned)",
                    v.value
                ),
            ));
        }
        if v.value < min || v.value > max {
            return Err(invalid(
                &v.at,
                field,
                format!(
                    "{} is outside {} to {}",
                    show_size(v.value),
                    show_size(min),
                    show_size(max)
                ),
            ));
        }
        Ok(v)
    };
    let esp = size(l.esp, 512 * MIB, "disk.esp", MIN_ESP, MAX_ESP)?;
    let root = size(l.root, 1024 * MIB, "disk.root", 8 * MIB, 1 << 40)?;
    let verity = size(l.verity, 64 * MIB, "disk.verity", MIB, 1 << 36)?;
    let state = size(l.state, 256 * MIB, "disk.state", 16 * MIB, 1 << 40)?;
    // The tree over a full root partition must fit the verity partition, or an update that
    // fills its root partition could never be installed.
    let blocks = root.value / u64::from(crust_format::verity::BLOCK_SIZE);
    let tree = (crust_format::verity::hash_blocks(blocks) + 1)
        * u64::from(crust_format::verity::BLOCK_SIZE);
    if tree > verity.value {
        return Err(invalid(
            &verity.at,
            "disk.verity",
            format!(
                "{} cannot hold the hash tree of a full {} root partition ({}); raise it",
                show_size(verity.value),
                show_size(root.value),
                show_size(tree)
            ),
        ));
    }
    Ok(DiskTable {
        esp,
        root,
        verity,
        state,
    })
}

/// `[signing]`: the key file, if one is named.
fn resolve_signing(l: SigningLayer) -> Result<Option<Located<PathBuf>>, ProfileError> {
    if let Some(key) = &l.key
        && !key.is_file()
    {
        return Err(invalid(
            &key.at,
            "signing.key",
            format!(
                "{} does not exist; make a key with `cargo xtask keygen` or remove the line to use the development key",
                key.display()
            ),
        ));
    }
    Ok(l.key)
}

/// `[secure-boot]`: present or not, its key folder and enrolment mode.
fn resolve_secure_boot(l: SecureBootLayer) -> Result<Option<SecureBoot>, ProfileError> {
    if let Some(keys) = &l.keys
        && !keys.is_dir()
    {
        return Err(invalid(
            &keys.at,
            "secure-boot.keys",
            format!(
                "{} is not a folder; make a key set with `cargo xtask keygen --secure-boot` or \
                 remove the line to use the development keys",
                keys.display()
            ),
        ));
    }
    Ok(l.declared.map(|at| SecureBoot {
        keys: l.keys,
        enroll: l.enroll.unwrap_or_else(|| Located {
            value: Enroll::default(),
            at: at.clone(),
        }),
        at,
    }))
}

/// `[state]`: encryption (`tpm` by default with Secure Boot, which the sealing needs), what
/// to do without the key, and the owner's recovery key file.
fn resolve_state(
    l: StateLayer,
    secure_boot: Option<&SecureBoot>,
    d: &Defaults,
) -> Result<StateTable, ProfileError> {
    let encryption = match l.encryption {
        None => match secure_boot {
            Some(sb) => Located {
                value: Encryption::Tpm,
                at: sb.at.clone(),
            },
            None => d.value(Encryption::None),
        },
        Some(e) => {
            let value = match e.value.as_str() {
                "tpm" => Encryption::Tpm,
                "none" => Encryption::None,
                other => {
                    return Err(invalid(
                        &e.at,
                        "state.encryption",
                        format!("{other:?} is not an encryption; use \"tpm\" or \"none\""),
                    ));
                }
            };
            Located { value, at: e.at }
        }
    };
    if encryption.value == Encryption::Tpm && secure_boot.is_none() {
        return Err(invalid(
            &encryption.at,
            "state.encryption",
            "\"tpm\" needs [secure-boot]: the key is sealed to PCR 7 (Secure Boot with your keys) \
             and to PCR 11 policies signed by the key set's PCR key; add a [secure-boot] table \
             or set encryption = \"none\""
                .into(),
        ));
    }
    let without_tpm = match l.without_tpm {
        None => Located {
            value: WithoutTpm::Refuse,
            at: encryption.at.clone(),
        },
        Some(w) => {
            let value = match w.value.as_str() {
                "refuse" => WithoutTpm::Refuse,
                "tmpfs" => WithoutTpm::Tmpfs,
                other => {
                    return Err(invalid(
                        &w.at,
                        "state.without-tpm",
                        format!(
                            "{other:?} is not a policy; use \"refuse\" (stop the boot) or \
                             \"tmpfs\" (a /var that is not kept)"
                        ),
                    ));
                }
            };
            Located { value, at: w.at }
        }
    };
    if let Some(key) = &l.recovery_key
        && !key.is_file()
    {
        return Err(invalid(
            &key.at,
            "state.recovery-key",
            format!(
                "{} is not a file; make an owner key pair with `cargo xtask keygen --recovery` \
                 and name its .pub here",
                key.display()
            ),
        ));
    }
    Ok(StateTable {
        encryption,
        without_tpm,
        recovery_key: l.recovery_key,
    })
}

/// `[config]`: what user-data may be and do. `signed` defaults to on with Secure Boot.
fn resolve_config(
    l: ConfigLayer,
    secure_boot: Option<&SecureBoot>,
    d: &Defaults,
) -> Result<HostConfigPolicy, ProfileError> {
    let sources = match l.sources {
        None => d.value(Source::ALL.to_vec()),
        Some(names) => {
            let mut sources = Vec::new();
            for name in &names.value {
                let source = Source::parse(name).ok_or_else(|| {
                    invalid(
                        &name.at,
                        "config.sources",
                        format!(
                            "{:?} is not a source; use cmdline, nocloud, install, imds or image",
                            name.value
                        ),
                    )
                })?;
                if sources.contains(&source) {
                    return Err(invalid(
                        &name.at,
                        "config.sources",
                        format!("{source} is listed twice"),
                    ));
                }
                sources.push(source);
            }
            Located {
                value: sources,
                at: names.at,
            }
        }
    };
    let signed = l.signed.unwrap_or_else(|| match secure_boot {
        Some(sb) => Located {
            value: true,
            at: sb.at.clone(),
        },
        None => d.value(false),
    });
    for key in &l.keys {
        if !key.is_file() {
            return Err(invalid(
                &key.at,
                "config.keys",
                format!(
                    "{} does not exist; name the .pub of a key made by `cargo xtask keygen`",
                    key.display()
                ),
            ));
        }
    }
    let allow = match l.allow {
        None => d.value(vec![Permission::Services]),
        Some(names) => {
            let mut allow = Vec::new();
            for name in &names.value {
                allow.push(Permission::parse(name).ok_or_else(|| {
                    invalid(
                        &name.at,
                        "config.allow",
                        format!(
                            "{:?} is not a permission; use services, pull, admin, host or volumes",
                            name.value
                        ),
                    )
                })?);
            }
            allow.sort();
            allow.dedup();
            Located {
                value: allow,
                at: names.at,
            }
        }
    };
    if let Some(default) = &l.default {
        if !default.is_file() {
            return Err(invalid(
                &default.at,
                "config.default",
                format!(
                    "{} is not a file; paths are relative to the profile that names them",
                    default.display()
                ),
            ));
        }
        check_default_config(default)?;
    }
    Ok(HostConfigPolicy {
        sources,
        signed,
        keys: l.keys,
        allow,
        default: l.default,
    })
}

/// The image's default user-data must at least be TOML of schema version 1 (the init checks
/// every field at boot, and falls back to built-in defaults with a warning if it must).
fn check_default_config(file: &Located<PathBuf>) -> Result<(), ProfileError> {
    let bad = |message: String| invalid(&file.at, "config.default", message);
    let text = read_small_text(&file.value)
        .map_err(|e| bad(format!("cannot read {}: {e}", file.display())))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| bad(format!("{} is not TOML: {}", file.display(), e.message())))?;
    match table.get("version").and_then(toml::Value::as_integer) {
        Some(1) => Ok(()),
        _ => Err(bad(format!(
            "{} must start with `version = 1` (docs/CONFIGURATION.md)",
            file.display()
        ))),
    }
}

/// `[output]`: the formats, `raw` when none is named.
fn resolve_outputs(l: OutputLayer, d: &Defaults) -> Vec<Located<OutputFormat>> {
    let mut outputs: Vec<Located<OutputFormat>> = Vec::new();
    for o in l.formats {
        if !outputs.iter().any(|p| p.value == o.value) {
            outputs.push(o);
        }
    }
    if outputs.is_empty() {
        outputs.push(d.value(OutputFormat::Raw));
    }
    outputs
}

fn check_package_name(p: &Located<String>, field: &str) -> Result<(), ProfileError> {
    // Debian policy 5.6.1: lowercase letters, digits, '+', '-', '.'; at least two characters,
    // starting with an alphanumeric.
    let ok = p.len() >= 2
        && p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && p.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ProfileError::Invalid {
            at: p.at.clone(),
            field: field.to_owned(),
            message: format!("{:?} is not a Debian package name", p.value),
        })
    }
}

/// Parses sizes such as `512MiB`, `1 GiB`, `64M` (binary units; bare numbers are bytes).
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as \"512MiB\" or \"1GiB\""))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        other => {
            return Err(format!(
                "unit {other:?} in {text:?} is not one of B, KiB, MiB, GiB, TiB (binary units)"
            ));
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Formats a byte count in binary units, for messages.
pub fn show_size(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const BASE: &str = r#"
[image]
name = "crust"
version = "0.1.0"

[kernel]
package = "linux-image-cloud-amd64"
modules = ["virtio_blk"]
cmdline = ["quiet"]

[root]
packages = ["crun"]
"#;

    #[test]
    fn an_include_of_a_device_a_fifo_or_a_huge_file_is_refused_not_read_forever() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let huge = dir.path().join("huge.toml");
        std::fs::write(&huge, "# padding\n".repeat(200_000)).unwrap();
        for (target, why) in [
            ("/dev/zero", "not a regular file"),
            (fifo.to_str().unwrap(), "not a regular file"),
            (huge.to_str().unwrap(), "larger than 1024 KiB"),
        ] {
            let p = write(dir.path(), "p.toml", &format!("include = {target:?}\n"));
            let err = Profile::load(&p).unwrap_err().to_string();
            assert!(err.contains(why), "{target}: {err}");
        }
    }

    #[test]
    fn include_merges_tables_and_extends_lists() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "base.toml", BASE);
        let p = write(
            dir.path(),
            "qemu.toml",
            "include = \"base.toml\"\n[kernel]\nmodules = [\"virtio_net\"]\ncmdline = [\"console=ttyS0\"]\n[image]\nversion = \"0.2.0\"\n[disk]\nesp = \"64MiB\"\n",
        );
        let profile = Profile::load(&p).unwrap();
        assert_eq!(profile.name, "qemu");
        assert_eq!(profile.image_name.value, "crust");
        assert_eq!(profile.image_version.value, "0.2.0");
        assert_eq!(profile.image_version.at.line, 6);
        let modules: Vec<_> = profile.modules.iter().map(|m| m.value.as_str()).collect();
        assert_eq!(modules, ["virtio_blk", "virtio_net"]);
        assert_eq!(profile.kernel_cmdline(), "panic=10 quiet console=ttyS0");
        assert_eq!(profile.esp_size.value, 64 * MIB);
        assert_eq!(profile.root_size.value, 1024 * MIB);
        assert_eq!(profile.files.len(), 2);
        assert_eq!(profile.lock_path(), dir.path().join("qemu.lock"));
    }

    #[test]
    fn unknown_keys_name_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "bad.toml",
            &format!("{BASE}\n[root]\npakages = [\"x\"]\n"),
        );
        let err = Profile::load(&p).unwrap_err().to_string();
        // Either the duplicate [root] table or the unknown key: both name the file and line.
        assert!(err.contains("bad.toml"), "{err}");
        assert!(err.contains("line"), "{err}");

        let p = write(
            dir.path(),
            "bad2.toml",
            "[image]\nname = \"crust\"\ncolour = \"red\"\n",
        );
        let err = Profile::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("bad2.toml") && err.contains("line 3") && err.contains("colour"),
            "{err}"
        );
    }

    #[test]
    fn wrong_types_and_impossible_sizes_are_refused_with_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "t.toml",
            &format!("{BASE}\n[disk]\nroot = true\n"),
        );
        let err = Profile::load(&p).unwrap_err().to_string();
        assert!(err.contains("t.toml") && err.contains("line 15"), "{err}");

        let p = write(
            dir.path(),
            "s.toml",
            &format!("{BASE}\n[disk]\nesp = \"10MiB\"\n"),
        );
        let err = Profile::load(&p).unwrap_err().to_string();
        assert!(err.contains("s.toml:15: disk.esp"), "{err}");

        let p = write(
            dir.path(),
            "u.toml",
            &format!("{BASE}\n[disk]\nroot = \"1 parsec\"\n"),
        );
        let err = Profile::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("u.toml:15: disk.root") && err.contains("parsec"),
            "{err}"
        );

        let p = write(
            dir.path(),
            "v.toml",
            &format!("{BASE}\n[disk]\nroot = \"4GiB\"\nverity = \"1MiB\"\n"),
        );
        let err = Profile::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("v.toml:16: disk.verity") && err.contains("hash tree"),
            "{err}"
        );
    }

    #[test]
    fn missing_inputs_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "k.toml",
            &format!("{BASE}\n[signing]\nkey = \"nope.key\"\n"),
        );
        let err = Profile::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("k.toml:15: signing.key") && err.contains("keygen"),
            "{err}"
        );

        let p = write(
            dir.path(),
            "f.toml",
            &format!("{BASE}\n[[root.files]]\nsource = \"motd\"\npath = \"/etc/motd\"\n"),
        );
        let err = Profile::load(&p).unwrap_err().to_string();
        assert!(err.contains("f.toml:14: root.files.source"), "{err}");

        let p = write(
            dir.path(),
            "n.toml",
            "[kernel]\npackage = \"linux-image-amd64\"\n",
        );
        let err = Profile::load(&p).unwrap_err().to_string();
        assert!(err.contains("image.name is not set"), "{err}");

        let p = write(dir.path(), "i.toml", "include = \"i.toml\"\n");
        let err = Profile::load(&p).unwrap_err().to_string();
        assert!(err.contains("i.toml:1: include"), "{err}");
    }

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("512MiB"), Ok(512 * MIB));
        assert_eq!(parse_size("1 GiB"), Ok(1024 * MIB));
        assert_eq!(parse_size("64M"), Ok(64 * MIB));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1.5GiB").is_err());
        assert!(parse_size("1MB").is_err());
    }

    #[test]
    fn secure_boot_is_off_unless_a_table_asks_and_is_inherited() {
        let dir = tempfile::tempdir().unwrap();
        let plain = write(dir.path(), "plain.toml", BASE);
        assert_eq!(Profile::load(&plain).unwrap().secure_boot, None);

        // An empty table: development keys, systemd-boot's default enrolment.
        let base = write(dir.path(), "base.toml", &format!("{BASE}\n[secure-boot]\n"));
        let sb = Profile::load(&base).unwrap().secure_boot.unwrap();
        assert_eq!((sb.keys, sb.enroll.value), (None, Enroll::Manual));
        assert_eq!(sb.at.line, 14);

        // An including file inherits the table and sets its keys, relative to itself.
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        let top = write(
            dir.path(),
            "top.toml",
            "include = \"base.toml\"\n[secure-boot]\nkeys = \"keys\"\nenroll = \"force\"\n",
        );
        let sb = Profile::load(&top).unwrap().secure_boot.unwrap();
        assert_eq!(sb.keys.unwrap().value, dir.path().join("keys"));
        assert_eq!(sb.enroll.value, Enroll::Force);
    }

    #[test]
    fn secure_boot_mistakes_name_the_field_and_the_remedy() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "k.toml",
            &format!("{BASE}\n[secure-boot]\nkeys = \"nowhere\"\n"),
        );
        let err = Profile::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("k.toml:15: secure-boot.keys") && err.contains("keygen --secure-boot"),
            "{err}"
        );
        let p = write(
            dir.path(),
            "e.toml",
            &format!("{BASE}\n[secure-boot]\nenroll = \"always\"\n"),
        );
        let err = Profile::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("e.toml") && err.contains("line 15") && err.contains("force"),
            "{err}"
        );
    }

    const WRITER: &str = "[[service]]\nname = \"writer\"\nimage.debian = [\"busybox-static\"]\nmounts = [{ volume = \"data\", target = \"/data\", path = \"w\" }]\n";

    #[test]
    fn volumes_are_declared_inherited_and_mounted_by_name() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "base.toml",
            &format!(
                "{BASE}\n[[volume]]\nname = \"data\"\nserial = [\"d1\", \"d2\"]\nfilesystem = \"xfs\"\n"
            ),
        );
        let p = write(
            dir.path(),
            "v.toml",
            &format!(
                "include = \"base.toml\"\n[[volume]]\nname = \"cache\"\ndisks = \"nvme-instance-store\"\n\
                 [[volume]]\nname = \"db\"\nformat = \"never\"\n{WRITER}"
            ),
        );
        let profile = Profile::load(&p).unwrap();
        let names: Vec<&str> = profile.volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["data", "cache", "db"]);
        assert_eq!(
            profile.volumes[0].disks,
            Disks::Serial(vec!["d1".into(), "d2".into()])
        );
        assert_eq!(profile.volumes[0].filesystem, volume::Filesystem::Xfs);
        assert_eq!(profile.volumes[1].disks, Disks::InstanceStores);
        assert_eq!(
            profile.volumes[2].disks,
            Disks::Unnamed,
            "the disk left to user-data"
        );
        assert_eq!(profile.volumes[2].format, Format::Never);
        let writer = &profile.services[0];
        assert_eq!(writer.volumes, ["data"]);
        assert_eq!(writer.mounts[0].source, "/var/mnt/data/w");
    }

    #[test]
    fn volume_mistakes_name_the_line_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        for (extra, want) in [
            (
                "[[volume]]\nname = \"data\"\nserial = \"a\"\nlabel = \"b\"\n",
                "volume data: label: name the disks one way",
            ),
            (
                "[[volume]]\nname = \"data\"\ndisk = \"/dev/sdb\"\n",
                "volume data: disk:",
            ),
            (
                "[[volume]]\nname = \"data\"\nfilesystem = \"zfs\"\n",
                "volume data: filesystem:",
            ),
            (
                "[[volume]]\nname = \"data\"\nmount-options = [\"exec\"]\n",
                "volume data: mount-options:",
            ),
            (
                "[[volume]]\nname = \"data\"\n[[volume]]\nname = \"data\"\n",
                "volume data: name: declared twice",
            ),
            (
                WRITER,
                "service writer: mounts.volume: no [[volume]] is named \"data\"",
            ),
            (
                "[[service]]\nname = \"sneak\"\nimage.debian = [\"busybox-static\"]\nmounts = [{ source = \"/var/mnt/data\", target = \"/d\" }]\n",
                "service sneak: mounts.source",
            ),
            (
                "[[service]]\nname = \"both\"\nimage.debian = [\"busybox-static\"]\nmounts = [{ source = \"/var/x\", volume = \"data\", target = \"/d\" }]\n",
                "service both: mounts:",
            ),
        ] {
            let p = write(dir.path(), "v.toml", &format!("{BASE}\n{extra}"));
            let err = Profile::load(&p).unwrap_err().to_string();
            assert!(
                err.contains("v.toml:") && err.contains(want),
                "{extra}: {err}"
            );
        }
    }

    #[test]
    fn state_encryption_follows_secure_boot_and_needs_it() {
        let dir = tempfile::tempdir().unwrap();
        let plain = Profile::load(&write(dir.path(), "plain.toml", BASE)).unwrap();
        assert_eq!(plain.state.encryption.value, Encryption::None);
        let sb = Profile::load(&write(
            dir.path(),
            "sb.toml",
            &format!("{BASE}\n[secure-boot]\n"),
        ))
        .unwrap();
        assert_eq!(sb.state.encryption.value, Encryption::Tpm);
        assert_eq!(sb.state.without_tpm.value, WithoutTpm::Refuse);
        assert_eq!(sb.state.recovery_key, None);

        std::fs::write(dir.path().join("owner.pub"), "key").unwrap();
        let top = Profile::load(&write(
            dir.path(),
            "top.toml",
            "include = \"sb.toml\"\n[state]\nwithout-tpm = \"tmpfs\"\nrecovery-key = \"owner.pub\"\n",
        ))
        .unwrap();
        assert_eq!(top.state.encryption.value, Encryption::Tpm);
        assert_eq!(top.state.without_tpm.value, WithoutTpm::Tmpfs);
        assert_eq!(
            top.state.recovery_key.unwrap().value,
            dir.path().join("owner.pub")
        );
        let off = Profile::load(&write(
            dir.path(),
            "off.toml",
            "include = \"sb.toml\"\n[state]\nencryption = \"none\"\n",
        ))
        .unwrap();
        assert_eq!(off.state.encryption.value, Encryption::None);
    }

    #[test]
    fn state_mistakes_name_the_field_and_the_remedy() {
        let dir = tempfile::tempdir().unwrap();
        for (name, extra, want) in [
            (
                "a.toml",
                "[state]\nencryption = \"tpm\"\n",
                "a.toml:15: state.encryption",
            ),
            (
                "b.toml",
                "[secure-boot]\n[state]\nencryption = \"luks\"\n",
                "b.toml:16: state.encryption",
            ),
            (
                "c.toml",
                "[secure-boot]\n[state]\nwithout-tpm = \"require\"\n",
                "c.toml:16: state.without-tpm",
            ),
            (
                "d.toml",
                "[secure-boot]\n[state]\nrecovery-key = \"nope.pub\"\n",
                "keygen --recovery",
            ),
            ("e.toml", "[state]\nencrypted = true\n", "unknown field"),
        ] {
            let p = write(dir.path(), name, &format!("{BASE}\n{extra}"));
            let err = Profile::load(&p).unwrap_err().to_string();
            assert!(err.contains(want), "{name}: {err}");
        }
        let err = Profile::load(&write(
            dir.path(),
            "f.toml",
            &format!("{BASE}\n[state]\nencryption = \"tpm\"\n"),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("needs [secure-boot]"), "{err}");
    }
}
