//! Stage 2, PID 1 in the verified root: prove that `/` is verified, then supervise —
//! reap orphans, and turn signals and the power button into a clean power-off or reboot.
//! The phases in order: state (`/var`), config (user-data), volumes (handed to a helper
//! process, which works while the boot goes on), network, clock, services, ready.

use std::convert::Infallible;
use std::path::Path;

use crust_format::Manifest;
use crust_format::initrd;
use crust_format::phase::Phase;
use nix::sys::reboot::set_cad_enabled;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::bootinfo::BootInfo;
use crate::error::{Advise, Context, Error, Result};
use crate::event::{self, Task};
use crate::mounts::{self, MountEntry};
use crate::power::PowerButtons;
use crate::services::{self, Services};
use crate::shutdown;
use crate::update::{Booted, Updater};
use crate::{clock, cmdline, config, console, manifest, net, state, volumes};
use crust_format::initrd::boot_keys as keys;
use crust_format::layout::Slot;
use crust_format::signature::PublicKey;
use crust_format::verity::{self, DM_UUID_PREFIX};
use std::path::PathBuf;

/// The signals PID 1 handles, all through a signalfd.
const SIGNALS: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGCHLD,
    Signal::SIGHUP,
    Signal::SIGPWR,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Runs stage 2; returns only on failure (a shutdown never returns).
pub fn run() -> Result<Infallible> {
    let options = cmdline::Options::read();
    crate::set_reboot_delay(options.reboot_delay);
    crate::observe::sink::take_over();
    let boot = std::fs::read_to_string(initrd::RUN_BOOT)
        .map(|text| BootInfo::parse(&text))
        .context("stage2", || format!("cannot read {}", initrd::RUN_BOOT))
        .advise("stage 2 must be started by stage 1 in the initramfs; boot the UKI")?;
    let manifest = manifest::load_from_run()?;

    let mut mask = SigSet::empty();
    for signal in SIGNALS {
        mask.add(signal);
    }
    // Blocked signals are queued even for PID 1 (which the kernel otherwise spares from
    // signals it has no handler for), and the signalfd hands them over in the main loop.
    mask.thread_block()
        .context("stage2", || "cannot block signals".into())?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("stage2", || "cannot create a signalfd".into())?;
    // Ctrl-alt-del then reaches PID 1 as SIGINT instead of rebooting on the spot.
    set_cad_enabled(false).context("stage2", || "cannot take over ctrl-alt-del".into())?;
    let stage1_took = boot
        .get(&format!("{}switch-root", keys::PHASE_PREFIX))
        .map(|s| format!(", stage 1 done at {s} s"))
        .unwrap_or_default();
    console::phase(
        Phase::Stage2,
        &format!(
            "crust-init {} in the verified root, slot {} on {}{stage1_took}",
            crate::VERSION,
            boot.get(keys::SLOT).unwrap_or("?"),
            boot.get(keys::DISK).unwrap_or("?"),
        ),
    );

    // Listening for dm-verity's reports before anything reads much of the root.
    let verity_watch = crate::update::corruption::Watch::new();
    let disk = boot.get(keys::DISK).unwrap_or("").to_owned();
    let state = if disk == crate::netboot::DISK {
        state::volatile("network boot; user-data's [state] disk, when it names one, comes next")
    } else {
        state::setup(&disk)?
    };
    console::phase(Phase::State, &state);
    crate::observe::status::enable();

    let mut network = net::Network::start();
    let host = config::phase(&mut network, &disk);
    state_disk(&host, &disk);
    let volumes = volumes::phase(&host.volume, &disk);
    network.phase(&host);
    let clock = clock::phase(&host, &network);

    services::mount_cgroups();
    prepare_etc();
    let agents = crate::observe::Agents::start(&host);
    let mut services = Services::load(Path::new("/"), &host.service, volumes.board());
    console::phase(Phase::Services, &services.start());

    let buttons = PowerButtons::new();
    let root = verified_root(&manifest)?;
    let button_note = buttons.describe();
    console::phase(
        Phase::Ready,
        &format!(
            "{} {}, slot {}, / is {} on {} (dm-verity root {}); {button_note}",
            manifest.name,
            manifest.version,
            boot.get(keys::SLOT).unwrap_or("?"),
            root.fstype,
            root.device,
            manifest.verity.root_hash.short(12),
        ),
    );

    services.report_healthy();
    // A network-booted host has no slots: no update agent (it says so instead).
    let updater: Option<Box<dyn Task>> = if disk == crate::netboot::DISK {
        crate::update::not_on_a_network_boot();
        None
    } else {
        Some(Box::new(Updater::new(
            booted(&boot, manifest.clone(), &root)?,
            run_key()?,
            services.healthy_flag(),
        )))
    };

    // Stopped in reverse: the updater first, then the services, the volume helper, the
    // clock, the observability agents (the shipper sends the services' last lines), the
    // network.
    let mut tasks: Vec<Box<dyn Task>> = vec![
        Box::new(verity_watch),
        Box::new(buttons),
        Box::new(network),
        Box::new(agents),
        Box::new(clock),
        Box::new(volumes),
        Box::new(services),
    ];
    tasks.extend(updater);
    let exit = event::run(&signals, &mut tasks);
    shutdown::shutdown(exit.action, &exit.reason)
}

/// `[state] disk` from user-data: a network-booted host's `/var` on that disk, over the
/// tmpfs (the console says which); a host booted from its disk says it ignores it.
fn state_disk(host: &config::HostConfig, disk: &str) {
    let Some(state) = &host.state else {
        return;
    };
    if disk != crate::netboot::DISK {
        console::warning(
            "state: state.disk in user-data is for network-booted hosts; this host keeps /var \
             on its state partition (ignored)",
        );
        return;
    }
    match crate::netboot::state::attach(&state.disk) {
        Ok(detail) => console::note("state", &detail),
        Err(why) => console::warning(&format!("state: {why}; /var stays a tmpfs, NOT persistent")),
    }
}

/// Where this boot came from, for the update agent.
fn booted(boot: &BootInfo, manifest: Manifest, root: &VerifiedRoot) -> Result<Booted> {
    let slot = match boot.get(keys::SLOT) {
        Some("a") => Slot::A,
        Some("b") => Slot::B,
        other => {
            return Err(Error::new(
                "stage2",
                format!("{} names no slot ({other:?})", initrd::RUN_BOOT),
            ));
        }
    };
    let devices = [keys::ROOT_DEVICE, keys::VERITY_DEVICE]
        .iter()
        .filter_map(|k| boot.get(k))
        .map(PathBuf::from)
        .chain(std::iter::once(Path::new("/dev").join(&root.device)))
        .collect();
    Ok(Booted {
        manifest,
        slot,
        disk: boot.get(keys::DISK).unwrap_or("").to_owned(),
        devices,
    })
}

/// The key that verified this image, which also verifies its updates.
fn run_key() -> Result<PublicKey> {
    let bytes = std::fs::read(initrd::RUN_PUBLIC_KEY).context("stage2", || {
        format!("cannot read {}", initrd::RUN_PUBLIC_KEY)
    })?;
    PublicKey::from_bytes(&bytes).context("stage2", || initrd::RUN_PUBLIC_KEY.to_string())
}

/// Files containers bind from the host's `/etc` (on the overlay): present, even if empty.
fn prepare_etc() {
    let defaults = [
        ("/etc/resolv.conf", ""),
        (
            "/etc/hosts",
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        ),
    ];
    for (path, content) in defaults {
        if !Path::new(path).exists()
            && let Err(e) = std::fs::write(path, content)
        {
            console::warning(&format!("cannot write {path}: {e}"));
        }
    }
}

/// What proves that `/` is the verified image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRoot {
    /// File system type of `/`.
    pub fstype: String,
    /// Kernel name of the device under `/`, such as `dm-0`.
    pub device: String,
}

/// Checks that `/` is mounted from the dm-verity device stage 1 made for this manifest.
fn verified_root(manifest: &Manifest) -> Result<VerifiedRoot> {
    let entries = mounts::read_mountinfo()
        .context("ready", || format!("cannot read {}", mounts::MOUNTINFO))?;
    let root = mounts::root_mount(&entries)
        .ok_or_else(|| Error::new("ready", "no mount on / in mountinfo"))?;
    let expected_uuid = verity::dm_uuid(&manifest.verity.root_hash);
    prove_root(
        root,
        |device, attr| {
            std::fs::read_to_string(format!("/sys/block/{device}/dm/{attr}"))
                .ok()
                .map(|s| s.trim().to_owned())
        },
        &expected_uuid,
        manifest.filesystem.as_str(),
    )
}

/// The pure part of [`verified_root`]: `dm_attr(device, "uuid")` reads sysfs.
fn prove_root(
    root: &MountEntry,
    dm_attr: impl Fn(&str, &str) -> Option<String>,
    expected_uuid: &str,
    fstype: &str,
) -> Result<VerifiedRoot> {
    let unverified = |why: String| {
        Error::new("ready", format!("/ is not the verified root: {why}"))
            .advice("stage 1 did not set up this root; boot the image's UKI")
    };
    let device = root
        .source
        .strip_prefix("/dev/")
        .filter(|d| d.starts_with("dm-"))
        .ok_or_else(|| unverified(format!("it is mounted from {}", root.source)))?;
    match dm_attr(device, "uuid") {
        Some(uuid) if uuid == expected_uuid => {}
        Some(uuid) if uuid.starts_with(DM_UUID_PREFIX) => {
            return Err(unverified(format!(
                "{device} verifies another root hash ({uuid})"
            )));
        }
        other => {
            return Err(unverified(format!(
                "{device} is not Crust's dm-verity device (uuid {other:?})"
            )));
        }
    }
    if root.fstype != fstype {
        return Err(unverified(format!(
            "it is {} but the manifest says {fstype}",
            root.fstype
        )));
    }
    Ok(VerifiedRoot {
        fstype: root.fstype.clone(),
        device: device.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "CRUST-VERITY-abcd";

    fn root(source: &str, fstype: &str) -> MountEntry {
        MountEntry {
            mount_point: "/".into(),
            fstype: fstype.into(),
            source: source.into(),
        }
    }

    fn sysfs(device: &str, attr: &str) -> Option<String> {
        match (device, attr) {
            ("dm-0", "uuid") => Some(HASH.into()),
            ("dm-1", "uuid") => Some("CRUST-VERITY-ffff".into()),
            ("dm-2", "uuid") => Some("CRYPT-LUKS2-1234".into()),
            _ => None,
        }
    }

    #[test]
    fn accepts_the_verity_device_of_this_manifest() {
        let proof = prove_root(&root("/dev/dm-0", "squashfs"), sysfs, HASH, "squashfs").unwrap();
        assert_eq!(proof.device, "dm-0");
        assert_eq!(proof.fstype, "squashfs");
    }

    #[test]
    fn refuses_anything_else() {
        for (source, fstype) in [
            ("/dev/vda2", "squashfs"),
            ("/dev/dm-1", "squashfs"),
            ("/dev/dm-2", "squashfs"),
            ("/dev/dm-9", "squashfs"),
            ("/dev/dm-0", "erofs"),
            ("rootfs", "rootfs"),
        ] {
            let err = prove_root(&root(source, fstype), sysfs, HASH, "squashfs").unwrap_err();
            assert_eq!(err.check, "ready", "{source} {fstype}");
        }
    }
}
