//! The pipeline: a profile in, an image out, one step per module.
//!
//! [`build`] loads the profile, brings the lock up to date (or refuses to, with `--locked`),
//! fetches the pinned packages, and then assembles root file system, verity tree, signed
//! manifest, initramfs, UKI, ESP and disk, checking each part against its partition before
//! anything is written. The image is written under a temporary name in the output folder
//! and renamed into place last: a failed build leaves the previous image (or none), never
//! half of one. A build whose inputs did not change since the last one returns at once.
//! Last comes the release ([`crate::release::publish`]): the image converted to the formats
//! asked for ([`crate::formats`]) and `SHA256SUMS` signed over the outputs; with only `raw`
//! asked for, that is one hash of the image.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use crust_format::boot_entry::BootEntryName;
use crust_format::install;
use crust_format::layout::{LAYOUT_VERSION, Role, Slot};
use crust_format::user_data::{self, Policy};
use crust_format::volume;
use crust_format::{Digest, Manifest};

use crate::apt::{Apt, AptError};
use crate::deb::{self, Excludes};
use crate::disk::{self, Sizes};
use crate::fat::{self, FatError, FatOptions};
use crate::fetch::{self, Cache, Deb};
use crate::formats::Stamp;
use crate::kernel::Kernel;
use crate::lock::{Inputs, Lock, Role as PackageRole};
use crate::oci::{self, ImageConfig};
use crate::profile::{KernelSource, Located, OutputFormat, Profile, ProfileError, show_size};
use crate::sbom::{self, Sbom};
use crate::secureboot::{self, KeySet};
use crate::service::{self, Bundle, HostFacts, ImageSource};
use crate::sign::{KeyKind, SigningKey};
use crate::tree::{Entry, Tree};
use crate::{esp, initramfs, measure, output, release, report, rootfs, sealed, uki, verity};

/// The file whose time is the build's (`SOURCE_DATE_EPOCH`), systemd's convention.
pub const CLOCK_EPOCH: &str = "usr/lib/clock-epoch";
/// The image's default user-data (`[config] default`).
pub const DEFAULT_CONFIG: &str = "usr/lib/crust/config.toml";
/// The observability agent in the root.
pub const OBSERVE: &str = crust_format::observe::AGENT_PATH;

/// What to build and where.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The profile file.
    pub profile: PathBuf,
    /// The static init binary.
    pub init: PathBuf,
    /// The output folder (`target/crust/<profile>`).
    pub out_dir: PathBuf,
    /// Where the development key lives (used when the profile names no key).
    pub dev_key_dir: PathBuf,
    /// The package cache.
    pub cache: Cache,
    /// Refuse to update an out-of-date lock file (for CI).
    pub locked: bool,
    /// Overrides the lock's `source-date-epoch` (from `SOURCE_DATE_EPOCH`).
    pub source_date_epoch: Option<u64>,
    /// What some output formats take besides the image (the installer's user-data).
    pub extras: Extras,
    /// The crates compiled into the init ([`sbom::cargo::init_crates`]), for the SBOM;
    /// `None` lists the init without them (and says so in the SBOM).
    pub init_crates: Option<Vec<sbom::Crate>>,
    /// The observability agent (the `crust-observe` crate, static), installed at
    /// `/usr/libexec/crust/observe`; `None` leaves it out (the host's `[metrics]` and
    /// `[logs]` then do nothing, and the init says so).
    pub observe: Option<Program>,
}

/// A static program of Crust's installed in the root besides the init.
#[derive(Debug, Clone)]
pub struct Program {
    /// The binary.
    pub path: PathBuf,
    /// The crates compiled into it (its own first), for the SBOM; `None` lists it alone.
    pub crates: Option<Vec<sbom::Crate>>,
}

/// What some output formats take besides the image.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// User-data the installer ISO carries (covered by the ISO's signed list).
    pub installer_user_data: Option<PathBuf>,
    /// `crust.netboot.url` for the netboot UKI's (signed) command line: the folder a
    /// network-booted host fetches `root.img` and `verity.img` from.
    pub netboot_url: Option<String>,
}

/// Checks a netboot URL before anything is built: `http://` or `https://`, a host, and
/// nothing the kernel command line would split or quote.
pub fn check_netboot_url(url: &str) -> Result<()> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .with_context(|| format!("--netboot-url {url:?}: not an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with(['/', ':']) {
        bail!("--netboot-url {url:?}: the URL names no host");
    }
    if url
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '"' || !c.is_ascii())
    {
        bail!(
            "--netboot-url {url:?}: spaces, quotes and non-ASCII characters cannot go on the kernel command line"
        );
    }
    Ok(())
}

/// Whether the netboot UKI in `out_dir` was made with `url` (see
/// [`install::NETBOOT_URL_RECORD`]).
fn netboot_url_matches(out_dir: &Path, url: Option<&str>) -> bool {
    let recorded =
        std::fs::read_to_string(out_dir.join(install::NETBOOT_URL_RECORD)).unwrap_or_default();
    recorded == url.unwrap_or("")
}

/// File names in the output folder.
pub mod outputs {
    /// The disk image.
    pub const IMAGE: &str = "image.raw";
    /// The manifest (also inside the UKI).
    pub const MANIFEST: &str = "manifest";
    /// Its signature.
    pub const SIGNATURE: &str = "manifest.sig";
    /// The build id of the image in the folder; an unchanged build compares against it.
    pub const BUILD_ID: &str = "build-id";
    /// The freshness stamp: build id and builder; an identical next build does nothing.
    pub const STAMP: &str = "build-stamp";
    /// The kernel in the UKI, for direct-kernel boots (the KVM probe, the benchmark floor).
    pub const KERNEL: &str = "vmlinuz";
    /// The update bundle of this build (`cargo xtask publish` puts it in a repository).
    pub const BUNDLE: &str = "update.bundle";
    /// The release's SPDX 2.3 SBOM (also in the bundle; the root has it without the root
    /// hash, see [`crate::sbom`]).
    pub const SBOM_SPDX: &str = "sbom.spdx.json";
    /// The same content as CycloneDX 1.5.
    pub const SBOM_CYCLONEDX: &str = "sbom.cdx.json";
}

/// Sizes of what went into the image, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Breakdown {
    /// The kernel image.
    pub kernel: u64,
    /// Kernel modules in the initramfs (uncompressed).
    pub modules: u64,
    /// The compressed initramfs.
    pub initramfs: u64,
    /// The init binary.
    pub init: u64,
    /// The whole UKI.
    pub uki: u64,
    /// The squashfs root.
    pub root: u64,
    /// The verity partition content.
    pub verity: u64,
    /// Bytes actually allocated by the sparse image file.
    pub allocated: u64,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    /// The image file.
    pub image: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// True if nothing changed and the previous image was kept.
    pub fresh: bool,
    /// Whether the image is signed with the development key.
    pub key: KeyKind,
    /// Sizes (zero for a fresh build, which computes nothing).
    pub breakdown: Breakdown,
    /// Duration of each step.
    pub steps: Vec<(&'static str, Duration)>,
    /// The files of the signed release (`SHA256SUMS` lists them), in name order.
    pub release: Vec<PathBuf>,
}

struct Steps(Vec<(&'static str, Duration)>, Instant);

impl Steps {
    fn done(&mut self, name: &'static str) {
        let now = Instant::now();
        self.0.push((name, now - self.1));
        self.1 = now;
    }
}

/// Builds the image a profile describes, in the profile's output formats.
pub fn build(req: &BuildRequest) -> Result<BuildOutcome> {
    build_with(req, &[])
}

/// [`build`], making `formats` besides the profile's `[output] formats` (`--format`).
pub fn build_with(req: &BuildRequest, formats: &[OutputFormat]) -> Result<BuildOutcome> {
    let mut steps = Steps(Vec::new(), Instant::now());
    let profile = Profile::load(&req.profile)?;
    let key = signing_key(&profile, &req.dev_key_dir)?;
    let secure_boot = secure_boot_keys(&profile, &req.dev_key_dir)?;
    let pcr_signer = secure_boot
        .as_ref()
        .map(|(keys, _)| keys.pcr_signer())
        .transpose()?;
    let recovery_key = recovery_key(&profile)?;
    let lock = ensure_lock(&profile, &req.cache, req.locked)?;
    let epoch = req.source_date_epoch.unwrap_or(lock.source_date_epoch);
    let init = std::fs::read(&req.init)
        .with_context(|| format!("cannot read the init binary {}", req.init.display()))?;
    check_static(&init).with_context(|| format!("{} cannot be PID 1", req.init.display()))?;
    let observe = match &req.observe {
        Some(p) => {
            let bytes = std::fs::read(&p.path).with_context(|| {
                format!("cannot read the observability agent {}", p.path.display())
            })?;
            check_static(&bytes)
                .with_context(|| format!("{} cannot run in the root", p.path.display()))?;
            Some((bytes, p.crates.as_deref()))
        }
        None => None,
    };
    let build_id = build_id(
        &profile,
        &lock,
        &init,
        req.init_crates.as_deref(),
        observe.as_ref().map(|(b, c)| (b.as_slice(), *c)),
        &key,
        secure_boot.as_ref(),
        pcr_signer.as_ref(),
        epoch,
    )?;
    steps.done("inputs");

    let image_path = req.out_dir.join(outputs::IMAGE);
    let stamp = Stamp { build_id, epoch };
    let wanted = wanted_formats(&profile, formats);
    let variants: Vec<(&str, &str)> = wanted.iter().filter_map(|f| f.boot_variant()).collect();
    let netboot = wanted.contains(&OutputFormat::Netboot);
    let netboot_url = req.extras.netboot_url.as_deref();
    if let Some(url) = netboot_url {
        if !netboot {
            bail!("--netboot-url {url:?} is for the netboot UKI; ask for it with --format netboot");
        }
        check_netboot_url(url)?;
    }
    if let Some(manifest) = fresh_output(&req.out_dir, &build_id).filter(|_| {
        variants
            .iter()
            .all(|(_, file)| req.out_dir.join(file).is_file())
            && (!netboot || netboot_url_matches(&req.out_dir, netboot_url))
    }) {
        // Formats asked for since the image was built are made now.
        let release = release::publish(&req.out_dir, &wanted, &key, &stamp, &req.extras)?;
        return Ok(BuildOutcome {
            image: image_path,
            manifest,
            fresh: true,
            key: key.kind,
            breakdown: Breakdown::default(),
            steps: steps.0,
            release,
        });
    }
    report::status(
        "Building",
        format!(
            "{} {} ({} profile)",
            profile.image_name.value, profile.image_version.value, profile.name
        ),
    );

    let apt = Apt::new(req.cache.root(), &profile)?;
    let debs = fetch::fetch(&req.cache, &apt, &lock)?;
    steps.done("fetch");

    let kernel = match &profile.kernel.value {
        KernelSource::Package(_) => {
            Kernel::from_package(&req.cache, package(&debs, PackageRole::Kernel)?)?
        }
        KernelSource::Local { image, modules } => Kernel::from_local(image, modules)?,
    };
    let modules = kernel.module_closure(&wanted_modules(&profile))?;
    let vmlinuz = std::fs::read(&kernel.image)
        .with_context(|| format!("cannot read the kernel {}", kernel.image.display()))?;
    let (stub, systemd_boot) = boot_files(package(&debs, PackageRole::Boot)?)?;
    steps.done("kernel");

    let os_release = os_release(&profile, &build_id);
    let policy = user_data_policy(&profile, &key)?;
    let mut root_tree = root_tree(&profile, &debs, &init, &os_release, &policy)?;
    let state_policy = measure::state_policy(
        &profile,
        pcr_signer.as_ref().map(|s| &s.public),
        recovery_key,
    );
    root_tree.insert(
        crust_format::sealed::POLICY_PATH,
        Entry::file(state_policy.to_text().into_bytes(), 0o644),
    )?;
    if let Some((bytes, _)) = &observe {
        root_tree.insert(OBSERVE, Entry::file(bytes.clone(), 0o755))?;
    }
    let (bundles, services) =
        service_bundles(&profile, &lock, &debs, &root_tree, req.cache.root())?;
    service::install(&mut root_tree, &bundles)?;
    steps.done("rootfs");
    // The SBOM, from the same inputs; its root copy goes into the root (without the root
    // hash, which does not exist yet: the release copy below adds it).
    let sbom = Sbom::gather(&sbom::Inputs {
        name: &profile.image_name.value,
        version: &profile.image_version.value,
        profile: &profile.name,
        build_id,
        epoch,
        mirror: &profile.mirror.value,
        security_mirror: profile.security_mirror.as_ref().map(|m| m.value.as_str()),
        debs: &debs,
        cache: &req.cache,
        init: Digest::of(&init),
        init_crates: req.init_crates.as_deref(),
        observe: observe.as_ref().map(|(b, c)| (Digest::of(b), *c)),
        services: &services,
    })?;
    root_tree.insert(sbom::ROOT_PATH, Entry::file(sbom.spdx(None), 0o644))?;
    steps.done("sbom");
    let root = rootfs::squashfs(&root_tree, epoch, profile.compression_level.value)?;
    fits(
        Role::Root(Slot::A),
        root.len() as u64,
        &profile.root_size,
        "disk.root",
    )?;
    steps.done("squashfs");

    let (verity_params, hash_tree) = verity::build(&root, verity::salt_for(&root));
    fits(
        Role::Verity(Slot::A),
        hash_tree.len() as u64,
        &profile.verity_size,
        "disk.verity",
    )?;
    let manifest = Manifest {
        layout: LAYOUT_VERSION,
        name: profile.image_name.value.clone(),
        version: profile.image_version.value.clone(),
        build_id,
        filesystem: profile.filesystem.value,
        verity: verity_params,
        kernel_release: kernel.release.clone(),
        kernel_sha256: Digest::of(&vmlinuz),
    };
    let manifest_text = manifest.to_text();
    let signature = key.sign(manifest_text.as_bytes());
    let release_facts = sbom::Release {
        root_hash: manifest.verity.root_hash,
        root_sha256: Digest::of(&root),
    };
    let sbom_spdx = sbom.spdx(Some(&release_facts));
    let sbom_cyclonedx = sbom.cyclonedx(&release_facts);
    steps.done("verity");

    let module_bytes: u64 = modules
        .modules
        .iter()
        .map(|m| std::fs::metadata(kernel.modules_dir.join(&m.path)).map_or(0, |md| md.len()))
        .sum();
    let initrd = initramfs::build(
        &initramfs::Contents {
            init: &init,
            manifest: manifest_text.as_bytes(),
            signature: &signature,
            public_key: &key.public_key().to_bytes(),
            kernel: &kernel,
            modules: &modules,
            os_release: &os_release,
        },
        epoch,
    )?;
    let cmdline = profile.kernel_cmdline();
    let mut parts = uki::Parts {
        os_release: &os_release,
        cmdline: &cmdline,
        uname: &kernel.release,
        initrd: &initrd,
        linux: &vmlinuz,
        pcrpkey: pcr_signer.as_ref().map(|s| s.public_pem.as_slice()),
        pcrsig: None,
    };
    // The PCR 11 this UKI will measure, its policy signed (the sealed /var's key unseals
    // under it), in a section the stub does not measure.
    let pcrsig = pcr_signer
        .as_ref()
        .map(|signer| measure::signature(&parts, signer))
        .transpose()
        .context("cannot sign the UKI's PCR 11 policy")?;
    parts.pcrsig = pcrsig.as_deref();
    let uki = uki::assemble(&stub, &parts)?;
    // The installer's and the netboot UKI, when asked for: the same kernel and initramfs,
    // one more word on the command line (so a PCR 11 policy of their own), signed like the
    // image's.
    let mut boot_variants = Vec::new();
    for (option, file) in &variants {
        let mut line = format!("{cmdline} {option}");
        if *file == install::NETBOOT_UKI
            && let Some(url) = netboot_url
        {
            line = format!("{line} {}={url}", install::NETBOOT_URL_OPTION);
        }
        let mut variant_parts = uki::Parts {
            cmdline: &line,
            pcrsig: None,
            ..parts
        };
        let variant_sig = pcr_signer
            .as_ref()
            .map(|signer| measure::signature(&variant_parts, signer))
            .transpose()
            .with_context(|| format!("cannot sign {file}'s PCR 11 policy"))?;
        variant_parts.pcrsig = variant_sig.as_deref();
        let variant = uki::assemble(&stub, &variant_parts)?;
        let variant = match &secure_boot {
            Some((keys, _)) => keys
                .signer(epoch)?
                .sign_pe(&variant)
                .with_context(|| format!("cannot sign {file} for Secure Boot"))?,
            None => variant,
        };
        boot_variants.push((*file, variant));
    }
    // Secure Boot: systemd-boot and the UKI signed last, after every section is in place
    // (the update bundle below carries this signed UKI too).
    let (uki, systemd_boot, enrolment) = match &secure_boot {
        Some((keys, mode)) => {
            let signer = keys.signer(epoch)?;
            (
                signer
                    .sign_pe(&uki)
                    .context("cannot sign the UKI for Secure Boot")?,
                signer
                    .sign_pe(&systemd_boot)
                    .context("cannot sign systemd-boot for Secure Boot")?,
                Some(keys.enrolment(*mode)?),
            )
        }
        None => (uki, systemd_boot, None),
    };
    steps.done("uki");

    let entry = BootEntryName::new(&manifest.name, &manifest.version, None);
    let esp_tree = esp::tree_with_enrolment(
        systemd_boot.into(),
        &[(entry, Arc::from(uki.as_slice()))],
        enrolment.as_ref(),
    )?;
    let sizes = Sizes {
        esp: profile.esp_size.value,
        root: profile.root_size.value,
        verity: profile.verity_size.value,
        state: profile.state_size.value,
    };
    let layout = disk::plan(sizes, &manifest.verity.root_hash, &build_id);
    std::fs::create_dir_all(&req.out_dir)
        .with_context(|| format!("cannot create {}", req.out_dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".image.raw.")
        .tempfile_in(&req.out_dir)
        .with_context(|| {
            format!(
                "cannot create a temporary image in {}",
                req.out_dir.display()
            )
        })?;
    let fat_options = FatOptions {
        volume_id: u32::from_le_bytes(build_id.0[..4].try_into()?),
        label: "CRUST-ESP".into(),
        timestamp: epoch,
        hidden_sectors: u32::try_from(layout.get(Role::Esp).offset / 512)?,
    };
    disk::write(tmp.as_file_mut(), &layout, |part, window| {
        use std::io::Write;
        match part.role {
            Role::Esp => match fat::write_volume(window, part.size, &fat_options, &esp_tree) {
                Err(FatError::TooLarge { needed, available }) => Err(too_large(
                    "ESP content",
                    needed,
                    available,
                    &profile.esp_size,
                    "disk.esp",
                )),
                other => other.map(|_| ()).map_err(Into::into),
            },
            Role::Root(Slot::A) => Ok(window.write_all(&root)?),
            Role::Verity(Slot::A) => Ok(window.write_all(&hash_tree)?),
            // Slot B stays empty until the first update; the state file system is made
            // below, by mke2fs, into the same file.
            _ => Ok(()),
        }
    })?;
    let state = layout.get(Role::State);
    if measure::encrypted(&profile) {
        // The host makes the key and the file system on its first boot.
        sealed::write_fresh(tmp.path(), state.offset)?;
    } else {
        crate::state::format(
            tmp.path(),
            state.offset,
            state.size,
            disk::derived_uuid(&build_id, "state file system"),
            epoch,
        )?;
    }
    steps.done("disk");
    crate::bundle::write(
        &req.out_dir.join(outputs::BUNDLE),
        &crate::bundle::Contents {
            layout: manifest.layout,
            name: &manifest.name,
            version: &manifest.version,
            root_hash: manifest.verity.root_hash,
            root: &root,
            verity: &hash_tree,
            uki: &uki,
            sbom: &sbom_spdx,
        },
        &key,
    )?;
    steps.done("bundle");

    // Publish: manifest files first, the image last, so a folder holding image.raw holds
    // the matching manifest.
    std::fs::remove_file(req.out_dir.join(outputs::STAMP)).ok();
    std::fs::remove_file(req.out_dir.join(outputs::BUILD_ID)).ok();
    release::clear(&req.out_dir)?;
    output::write_atomic(
        &req.out_dir.join(outputs::MANIFEST),
        manifest_text.as_bytes(),
    )?;
    output::write_atomic(&req.out_dir.join(outputs::SIGNATURE), &signature)?;
    output::write_atomic(&req.out_dir.join(outputs::SBOM_SPDX), &sbom_spdx)?;
    output::write_atomic(&req.out_dir.join(outputs::SBOM_CYCLONEDX), &sbom_cyclonedx)?;
    output::link_or_copy(&kernel.image, &req.out_dir.join(outputs::KERNEL))?;
    for (file, bytes) in &boot_variants {
        output::write_atomic(&req.out_dir.join(file), bytes)?;
    }
    if netboot {
        output::write_atomic(
            &req.out_dir.join(install::NETBOOT_URL_RECORD),
            netboot_url.unwrap_or("").as_bytes(),
        )?;
    }
    output::make_public(tmp.as_file())?;
    let allocated = {
        use std::os::unix::fs::MetadataExt;
        tmp.as_file().metadata()?.blocks() * 512
    };
    tmp.persist(&image_path)
        .with_context(|| format!("cannot move the image to {}", image_path.display()))?;
    output::write_atomic(
        &req.out_dir.join(outputs::BUILD_ID),
        build_id.to_hex().as_bytes(),
    )?;
    output::write_atomic(
        &req.out_dir.join(outputs::STAMP),
        freshness_stamp(&build_id).as_bytes(),
    )?;
    steps.done("publish");
    let release = release::publish(&req.out_dir, &wanted, &key, &stamp, &req.extras)?;
    steps.done("release");

    Ok(BuildOutcome {
        image: image_path,
        manifest,
        fresh: false,
        key: key.kind,
        breakdown: Breakdown {
            kernel: vmlinuz.len() as u64,
            modules: module_bytes,
            initramfs: initrd.len() as u64,
            init: init.len() as u64,
            uki: uki.len() as u64,
            root: root.len() as u64,
            verity: hash_tree.len() as u64,
            allocated,
        },
        steps: steps.0,
        release,
    })
}

/// Refreshes a profile's lock file from the archive, keeping its epoch if the resolved
/// packages did not change.
pub fn lock(profile_path: &Path, cache: &Cache) -> Result<Lock> {
    let profile = Profile::load(profile_path)?;
    let old = Lock::read(&profile.lock_path())?;
    let lock = resolve(&profile, cache, old.as_ref())?;
    lock.write(&profile.lock_path())?;
    Ok(lock)
}

fn resolve(profile: &Profile, cache: &Cache, old: Option<&Lock>) -> Result<Lock> {
    let apt = Apt::new(cache.root(), profile)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut lock =
        fetch::resolve(&apt, profile, now).map_err(|e| name_unknown_package(profile, e))?;
    if let Some(old) = old.filter(|o| o.packages == lock.packages) {
        lock.source_date_epoch = old.source_date_epoch;
    }
    Ok(lock)
}

/// Why a profile's lock file cannot be used as it is (what `--locked` refuses).
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock was resolved from other inputs than the profile asks for now.
    #[error(
        "{} is out of date for {} ({change}); run `cargo xtask lock --profile {name}`",
        lock.display(),
        profile.display()
    )]
    OutOfDate {
        /// The lock file.
        lock: PathBuf,
        /// The profile file.
        profile: PathBuf,
        /// The profile's name (for the command that refreshes it).
        name: String,
        /// What changed, in one line ([`Inputs::describe_change`]).
        change: String,
    },
    /// There is no lock file.
    #[error("{} does not exist; run `cargo xtask lock --profile {name}`", lock.display())]
    Missing {
        /// The lock file.
        lock: PathBuf,
        /// The profile's name.
        name: String,
    },
}

/// A profile's lock file compared with what the profile asks for (no network).
#[derive(Debug, Clone)]
pub enum LockState {
    /// The lock was resolved from the profile's current inputs.
    Current(Lock),
    /// The lock was resolved from other inputs.
    OutOfDate(Lock),
    /// There is no lock file.
    Missing,
}

/// Reads a profile's lock and tells whether it is current: its recorded inputs (suite,
/// mirrors, kernel, boot and root packages, service packages and images) against the
/// profile's. A `--locked` build needs [`LockState::Current`].
pub fn lock_state(profile: &Profile) -> Result<LockState> {
    Ok(match Lock::read(&profile.lock_path())? {
        Some(lock) if lock.inputs == Inputs::of(profile) => LockState::Current(lock),
        Some(lock) => LockState::OutOfDate(lock),
        None => LockState::Missing,
    })
}

impl LockState {
    /// The lock if it is current, else the error a `--locked` build stops with (naming the
    /// command that refreshes it).
    pub fn require(self, profile: &Profile) -> Result<Lock, LockError> {
        match self {
            LockState::Current(lock) => Ok(lock),
            LockState::OutOfDate(lock) => Err(LockError::OutOfDate {
                lock: profile.lock_path(),
                profile: profile.path.clone(),
                name: profile.name.clone(),
                change: Inputs::of(profile).describe_change(&lock.inputs),
            }),
            LockState::Missing => Err(LockError::Missing {
                lock: profile.lock_path(),
                name: profile.name.clone(),
            }),
        }
    }
}

/// Reads the lock, refreshing it when the profile asks for other packages (unless `locked`).
fn ensure_lock(profile: &Profile, cache: &Cache, locked: bool) -> Result<Lock> {
    let path = profile.lock_path();
    let state = lock_state(profile)?;
    let old = match state {
        LockState::Current(lock) => return Ok(lock),
        state if locked => return Ok(state.require(profile)?),
        LockState::OutOfDate(lock) => Some(lock),
        LockState::Missing => None,
    };
    if let Some(old) = &old
        && let Some(lock) = fetch::refresh_images(old, profile)?
    {
        report::status(
            "Locking",
            format!(
                "{}: service images, on the packages already pinned (apt not asked)",
                profile.name
            ),
        );
        lock.write(&path)?;
        return Ok(lock);
    }
    report::status(
        "Locking",
        format!(
            "{} packages against Debian {}",
            profile.name, profile.suite.value
        ),
    );
    let lock = resolve(profile, cache, old.as_ref())?;
    lock.write(&path)?;
    Ok(lock)
}

/// Turns apt's "no such package" into an error at the profile line that asked for it.
fn name_unknown_package(profile: &Profile, err: anyhow::Error) -> anyhow::Error {
    let Some(AptError::UnknownPackage { suite, name }) = err.downcast_ref::<AptError>() else {
        return err;
    };
    let message = format!(
        "Debian {suite} has no package {name:?}; check the name (`apt-cache search`) or remove it"
    );
    let located = profile
        .packages
        .iter()
        .map(|p| (p, "root.packages"))
        .chain(std::iter::once((&profile.boot_package, "boot.package")))
        .find(|(p, _)| p.value == *name);
    match (located, &profile.kernel.value) {
        (Some((p, field)), _) => ProfileError::Invalid {
            at: p.at.clone(),
            field: field.into(),
            message,
        }
        .into(),
        (None, KernelSource::Package(k)) if k == name => ProfileError::Invalid {
            at: profile.kernel.at.clone(),
            field: "kernel.package".into(),
            message,
        }
        .into(),
        _ => anyhow!(message),
    }
}

/// The profile's output formats, then `extra`, without repeats.
fn wanted_formats(profile: &Profile, extra: &[OutputFormat]) -> Vec<OutputFormat> {
    let mut formats: Vec<OutputFormat> = profile.outputs.iter().map(|o| o.value).collect();
    for f in extra {
        if !formats.contains(f) {
            formats.push(*f);
        }
    }
    formats
}

/// The key a profile signs with: its `signing.key`, or (loudly) the development key kept in
/// `dev_key_dir`.
pub fn signing_key(profile: &Profile, dev_key_dir: &Path) -> Result<SigningKey> {
    match &profile.signing_key {
        Some(path) => SigningKey::load(path).with_context(|| format!("{}: signing.key", path.at)),
        None => {
            let key = SigningKey::development(dev_key_dir)?;
            report::warn(format!(
                "signing with the DEVELOPMENT key {} ({}): this image is for testing only. \
                 Make a real key with `cargo xtask keygen` and set signing.key in {}",
                key.path.display(),
                key.public_key().fingerprint(),
                profile.path.display()
            ));
            Ok(key)
        }
    }
}

/// The Secure Boot key set a profile signs with and its enrolment mode: `secure-boot.keys`,
/// or (loudly) the development set kept in `dev_key_dir`; `None` without `[secure-boot]`.
pub fn secure_boot_keys(
    profile: &Profile,
    dev_key_dir: &Path,
) -> Result<Option<(KeySet, secureboot::Enroll)>> {
    let Some(config) = &profile.secure_boot else {
        return Ok(None);
    };
    let keys = match &config.keys {
        Some(dir) => KeySet::open(dir).with_context(|| format!("{}: secure-boot.keys", dir.at))?,
        None => {
            let keys = KeySet::development(dev_key_dir)?;
            report::warn(format!(
                "signing for Secure Boot with the DEVELOPMENT keys in {}: machines that enrol \
                 them trust every test build of this checkout. Make your own with `cargo xtask \
                 keygen --secure-boot` and set secure-boot.keys in {}",
                keys.dir().display(),
                profile.path.display()
            ));
            keys
        }
    };
    Ok(Some((keys, config.enroll.value)))
}

/// The modules the profile asks for, and those an encrypted state partition needs on images
/// that may meet one (Secure Boot images: their hosts may have sealed a `/var` even if this
/// version makes new ones unencrypted).
fn wanted_modules(profile: &Profile) -> Vec<Located<String>> {
    let mut wanted = profile.modules.clone();
    if let Some(sb) = &profile.secure_boot {
        wanted.extend(measure::STATE_MODULES.iter().map(|m| Located {
            value: (*m).to_owned(),
            at: sb.at.clone(),
        }));
    }
    wanted
}

/// The owner's recovery key (`[state] recovery-key`); warns when an encrypting profile has
/// none.
fn recovery_key(profile: &Profile) -> Result<Option<[u8; 32]>> {
    match &profile.state.recovery_key {
        Some(path) => sealed::read_recovery_public(path)
            .map(Some)
            .with_context(|| format!("{}: state.recovery-key", path.at)),
        None => {
            if measure::encrypted(profile) {
                report::warn(format!(
                    "{} encrypts /var but names no state.recovery-key: a host whose TPM is \
                     cleared or whose disk moves loses its /var. Make an owner key with \
                     `cargo xtask keygen --recovery` and name its .pub (docs/SECURE-BOOT.md)",
                    profile.path.display()
                ));
            }
            Ok(None)
        }
    }
}

/// Everything that determines the image, hashed: profile files, lock, init (and its crates,
/// which the SBOM lists), public key, the Secure Boot certificate and enrolment files, the
/// PCR signing key's public half, the owner's recovery key, epoch, and this builder's
/// version.
#[allow(clippy::too_many_arguments)]
fn build_id(
    profile: &Profile,
    lock: &Lock,
    init: &[u8],
    init_crates: Option<&[sbom::Crate]>,
    observe: Option<(&[u8], Option<&[sbom::Crate]>)>,
    key: &SigningKey,
    secure_boot: Option<&(KeySet, secureboot::Enroll)>,
    pcr_signer: Option<&measure::PcrSigner>,
    epoch: u64,
) -> Result<Digest> {
    let mut parts: Vec<Vec<u8>> = vec![
        b"crust build v1".to_vec(),
        env!("CARGO_PKG_VERSION").as_bytes().to_vec(),
        toml::to_string(lock)?.into_bytes(),
        Digest::of(init).0.to_vec(),
        key.public_key().to_bytes().to_vec(),
        epoch.to_le_bytes().to_vec(),
    ];
    if let Some(crates) = init_crates {
        // The SBOM in the root lists them.
        parts.push(b"init crates".to_vec());
        parts.push(serde_json::to_vec(crates)?);
    }
    if let Some((binary, crates)) = observe {
        parts.push(b"observe".to_vec());
        parts.push(Digest::of(binary).0.to_vec());
        if let Some(crates) = crates {
            parts.push(serde_json::to_vec(crates)?);
        }
    }
    if let Some((keys, mode)) = secure_boot {
        // The certificate names the db key that signs; the enrolment files go on the ESP.
        parts.push(mode.loader_conf_value().as_bytes().to_vec());
        let db = keys.certificate(secureboot::Role::Db);
        let updates = secureboot::Role::ALL.map(|role| keys.update(role));
        for file in std::iter::once(&db).chain(&updates) {
            parts.push(
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?,
            );
        }
    }
    if let Some(signer) = pcr_signer {
        parts.push(b"pcr key".to_vec());
        parts.push(signer.public_pem.clone());
    }
    if let Some(recovery) = &profile.state.recovery_key {
        parts.push(b"recovery key".to_vec());
        parts.push(
            std::fs::read(&recovery.value)
                .with_context(|| format!("cannot read {}", recovery.display()))?,
        );
    }
    for file in &profile.files {
        parts.push(std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?);
    }
    for f in profile.config.default.iter().chain(&profile.config.keys) {
        parts
            .push(std::fs::read(&f.value).with_context(|| format!("cannot read {}", f.display()))?);
    }
    for f in &profile.files_in_root {
        parts.push(f.path.as_bytes().to_vec());
        parts.push(
            std::fs::read(&f.source)
                .with_context(|| format!("cannot read {}", f.source.display()))?,
        );
    }
    if let KernelSource::Local { image, modules } = &profile.kernel.value {
        // A local kernel is an input the lock does not pin: hash what the build reads.
        parts.push(std::fs::read(image)?);
        parts.push(std::fs::read(modules.join("modules.dep"))?);
    }
    for s in &profile.services {
        if let Some(ImageSource::OciLayout { path, .. }) = s.image() {
            // Blobs are content-addressed from the index down: the index pins them all.
            parts.push(std::fs::read(path.join("index.json"))?);
        }
        for f in &s.files {
            parts.push(std::fs::read(&f.source)?);
        }
    }
    Ok(Digest::of_parts(parts.iter().map(Vec::as_slice)))
}

/// What decides whether an output folder is up to date: the build id, and this builder
/// itself (a changed builder rebuilds, although its version does not enter the image). The
/// executable is known by size, modification time and inode, which cost nothing to read.
fn freshness_stamp(build_id: &Digest) -> String {
    use std::os::unix::fs::MetadataExt;
    let exe = std::env::current_exe()
        .and_then(std::fs::metadata)
        .map(|m| format!("{}:{}.{}:{}", m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
        .unwrap_or_default();
    format!("{build_id} {exe}\n")
}

/// The manifest of the image in `out_dir` if it was built from `build_id` by this builder.
fn fresh_output(out_dir: &Path, build_id: &Digest) -> Option<Manifest> {
    let recorded = std::fs::read_to_string(out_dir.join(outputs::STAMP)).ok()?;
    if recorded != freshness_stamp(build_id) || !out_dir.join(outputs::IMAGE).is_file() {
        return None;
    }
    Manifest::parse(&std::fs::read(out_dir.join(outputs::MANIFEST)).ok()?).ok()
}

/// Refuses an init that needs a dynamic loader: there is none in the initramfs.
fn check_static(init: &[u8]) -> Result<()> {
    use object::read::elf::{ElfFile64, ProgramHeader};
    let elf =
        ElfFile64::<object::Endianness>::parse(init).context("not an x86-64 ELF executable")?;
    let endian = elf.endian();
    let dynamic = elf
        .elf_program_headers()
        .iter()
        .any(|p| p.p_type(endian) == object::elf::PT_INTERP);
    if dynamic {
        bail!("it is dynamically linked; build it static (musl, or glibc with +crt-static)");
    }
    Ok(())
}

fn package(debs: &[Deb], role: PackageRole) -> Result<&Deb> {
    debs.iter()
        .find(|d| d.package.role == role)
        .ok_or_else(|| anyhow!("the lock file has no {role:?} package; run `cargo xtask lock`"))
}

/// The UKI stub and systemd-boot from the boot package.
pub fn boot_files(deb: &Deb) -> Result<(Vec<u8>, Vec<u8>)> {
    let (mut stub, mut boot) = (None, None);
    deb::walk_data(&deb.path, |path, _, data| {
        let slot = match path {
            uki::STUB_PATH => &mut stub,
            uki::BOOT_PATH => &mut boot,
            _ => return Ok(()),
        };
        let mut buf = Vec::new();
        data.read_to_end(&mut buf)?;
        *slot = Some(buf);
        Ok(())
    })?;
    match (stub, boot) {
        (Some(s), Some(b)) => Ok((s, b)),
        _ => bail!(
            "{} lacks {} or {}: is it systemd-boot-efi?",
            deb.package,
            uki::STUB_PATH,
            uki::BOOT_PATH
        ),
    }
}

fn os_release(profile: &Profile, build_id: &Digest) -> String {
    let (name, version) = (&profile.image_name.value, &profile.image_version.value);
    format!(
        "NAME=\"Crust\"\n\
         ID=crust\n\
         PRETTY_NAME=\"Crust {version} ({name}, {variant})\"\n\
         VERSION=\"{version}\"\n\
         VERSION_ID={version}\n\
         IMAGE_ID={name}\n\
         IMAGE_VERSION={version}\n\
         VARIANT_ID={variant}\n\
         BUILD_ID={build}\n",
        variant = profile.name,
        build = build_id.short(12),
    )
}

/// The OCI runtime bundles of the profile's services, in start order, and the SBOM's view of
/// the images among them.
fn service_bundles(
    profile: &Profile,
    lock: &Lock,
    debs: &[Deb],
    root: &Tree,
    cache_root: &Path,
) -> Result<(Vec<Bundle>, Vec<sbom::Service>)> {
    let host = HostFacts {
        image_name: profile.image_name.value.clone(),
        image_version: profile.image_version.value.clone(),
    };
    let mut bundles = Vec::new();
    let mut images = Vec::new();
    for decl in &profile.services {
        let Some(image) = decl.image() else {
            // A host program or an image containerd pulls at boot: no bundle to make.
            bundles.push(service::process_service(decl, root, &host)?);
            continue;
        };
        let (tree, config) = match image {
            ImageSource::Debian(_) => {
                let mut tree = Tree::new();
                let mine = debs.iter().filter(|d| {
                    d.package.role == PackageRole::Service
                        && d.package.service.as_deref() == Some(&decl.name)
                });
                for deb in mine {
                    deb::unpack(&mut tree, &deb.path, &Excludes::default()).with_context(|| {
                        format!("service {}: cannot unpack {}", decl.name, deb.package)
                    })?;
                }
                deb::add_merged_usr_links(&mut tree)?;
                (tree, ImageConfig::default())
            }
            ImageSource::OciLayout { path, tag } => {
                let (tree, config) = oci::read_layout(path, tag.as_deref())
                    .with_context(|| format!("{}: service {}: image", decl.at, decl.name))?;
                let folder = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| decl.name.clone());
                images.push(sbom::Service {
                    name: decl.name.clone(),
                    image: sbom::ServiceImage::Oci {
                        name: tag.clone().unwrap_or(folder),
                        digest: config.digest.clone().unwrap_or_default(),
                        repository: None,
                        tag: tag.clone(),
                        vendor: config.vendor.clone(),
                    },
                });
                (tree, config)
            }
            ImageSource::Registry(reference) => {
                let pinned = lock
                    .images
                    .iter()
                    .find(|i| i.service == decl.name && &i.reference == reference)
                    .with_context(|| {
                        format!(
                            "the lock pins no image for service {}; run `cargo xtask lock`",
                            decl.name
                        )
                    })?;
                let layout = oci::pull(cache_root, reference, &pinned.digest)?;
                let (tree, config) = oci::read_layout(&layout, Some("image"))
                    .with_context(|| format!("service {}: image {reference}", decl.name))?;
                let r = oci::Reference::parse(reference).map_err(anyhow::Error::msg)?;
                images.push(sbom::Service {
                    name: decl.name.clone(),
                    image: sbom::ServiceImage::Oci {
                        name: r
                            .repository
                            .rsplit('/')
                            .next()
                            .unwrap_or(&r.repository)
                            .to_owned(),
                        // The digest the lock pins (what the registry serves).
                        digest: pinned.digest.clone(),
                        repository: Some(format!("{}/{}", r.registry, r.repository)),
                        tag: r.tag.clone(),
                        vendor: config.vendor.clone(),
                    },
                });
                (tree, config)
            }
        };
        if matches!(image, ImageSource::Debian(_)) {
            images.push(sbom::Service {
                name: decl.name.clone(),
                image: sbom::ServiceImage::Debian,
            });
        }
        bundles.push(service::bundle(decl, tree, &config, &host)?);
    }
    Ok((bundles, images))
}

/// What user-data may be and do on the image's hosts (`[config]`), with the keys that may
/// sign it: the profile's `config.keys`, or the image's own signing key.
pub fn user_data_policy(profile: &Profile, key: &SigningKey) -> Result<Policy> {
    let c = &profile.config;
    let keys = if c.keys.is_empty() {
        vec![key.public_key()]
    } else {
        c.keys
            .iter()
            .map(|k| {
                crate::release::read_public_key(k).with_context(|| format!("{}: config.keys", k.at))
            })
            .collect::<Result<_>>()?
    };
    Ok(Policy {
        sources: c.sources.value.clone(),
        signed: c.signed.value,
        keys,
        allow: c.allow.value.clone(),
    })
}

/// The root file system: the profile's packages (merged `/usr`), the init, os-release, the
/// mount points the init needs, the user-data policy, and the profile's files.
fn root_tree(
    profile: &Profile,
    debs: &[Deb],
    init: &[u8],
    os_release: &str,
    policy: &Policy,
) -> Result<Tree> {
    let mut tree = Tree::new();
    let excludes = Excludes::new(profile.exclude.iter().map(|e| e.value.clone()));
    for deb in debs.iter().filter(|d| d.package.role == PackageRole::Root) {
        deb::unpack(&mut tree, &deb.path, &excludes)
            .with_context(|| format!("cannot unpack {}", deb.package))?;
    }
    deb::add_merged_usr_links(&mut tree)?;
    for dir in [
        "dev", "proc", "sys", "run", "var", "etc", "usr/lib", "usr/sbin",
    ] {
        tree.insert(dir, Entry::dir(0o755))?;
    }
    tree.insert("tmp", Entry::dir(0o1777))?;
    tree.insert("root", Entry::dir(0o700))?;
    tree.insert("usr/sbin/init", Entry::file(init.to_vec(), 0o755))?;
    tree.insert(
        "usr/lib/os-release",
        Entry::file(os_release.as_bytes().to_vec(), 0o644),
    )?;
    tree.insert("etc/os-release", Entry::symlink("../usr/lib/os-release"))?;
    // The clock never goes below the build's time: the init (like systemd) moves a clock
    // that is earlier than this file's modification time, which is SOURCE_DATE_EPOCH.
    tree.insert(CLOCK_EPOCH, Entry::file(Vec::new(), 0o644))?;
    tree.insert(
        user_data::POLICY_PATH,
        Entry::file(policy.to_text().into_bytes(), 0o644),
    )?;
    // The profile's volumes, and the tools they need in the root.
    for v in &profile.volumes {
        tree.insert(
            &format!("{}/{}", volume::VOLUMES_DIR, v.name),
            Entry::file(v.to_text().into_bytes(), 0o644),
        )?;
        let several = match &v.disks {
            volume::Disks::InstanceStores => true,
            volume::Disks::ById(d) | volume::Disks::Serial(d) | volume::Disks::Wwn(d) => {
                d.len() > 1
            }
            _ => false,
        };
        let mut needs = vec![match v.filesystem {
            volume::Filesystem::Ext4 => ("usr/sbin/mke2fs", "e2fsprogs"),
            volume::Filesystem::Xfs => ("usr/sbin/mkfs.xfs", "xfsprogs"),
        }];
        if several {
            needs.push(("usr/sbin/mdadm", "mdadm"));
        }
        for (tool, package) in needs {
            if tree.get(tool).is_none() {
                bail!(
                    "{}: volume {}: the root has no /{tool}; add {package} to [root] packages",
                    v.at,
                    v.name
                );
            }
        }
    }
    if let Some(default) = &profile.config.default {
        let data = std::fs::read(&default.value)
            .with_context(|| format!("{}: cannot read {}", default.at, default.display()))?;
        tree.insert(DEFAULT_CONFIG, Entry::file(data, 0o644))?;
    }
    for f in &profile.files_in_root {
        let data = std::fs::read(&f.source)
            .with_context(|| format!("{}: cannot read {}", f.at, f.source.display()))?;
        tree.insert(&f.path, Entry::file(data, f.mode))
            .with_context(|| format!("{}: root.files", f.at))?;
    }
    Ok(tree)
}

fn fits(role: Role, len: u64, size: &Located<u64>, field: &str) -> Result<()> {
    if len > size.value {
        return Err(too_large(
            match role {
                Role::Root(_) => "root file system",
                _ => "verity hash tree",
            },
            len,
            size.value,
            size,
            field,
        ));
    }
    Ok(())
}

fn too_large(
    what: &str,
    needed: u64,
    available: u64,
    at: &Located<u64>,
    field: &str,
) -> anyhow::Error {
    ProfileError::Invalid {
        at: at.at.clone(),
        field: field.to_owned(),
        message: format!(
            "the {what} needs {} but the partition holds {}; raise {field} (nothing was written)",
            show_size(needed),
            show_size(available)
        ),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netboot_urls_are_checked_before_building() {
        assert!(check_netboot_url("http://192.168.50.1/crust/").is_ok());
        assert!(check_netboot_url("https://boot.example:8443/crust").is_ok());
        for bad in [
            "ftp://boot/crust",
            "http://",
            "https:///crust",
            "http://boot/a b",
            "http://boot/\"x\"",
            "boot/crust",
        ] {
            assert!(check_netboot_url(bad).is_err(), "{bad}");
        }
    }
}
