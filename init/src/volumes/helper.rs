//! The volume helper: the init binary again, started by PID 1 with [`super::HELPER_ARG`],
//! which sets every declared volume up from start to end and exits. It is a process of its
//! own because the work runs tools (mkfs, e2fsck, mdadm) that can take minutes on large
//! disks, and PID 1's loop reaps every child it has: the helper waits for its own.
//!
//! For each volume (those with `format = "never"` first, then those naming their disks,
//! then instance stores, so a disk a volume names is never taken or formatted by another):
//!
//! 1. already mounted on `/var/mnt/<name>` (a later run): kept as it is;
//! 2. its disks found in sysfs ([`super::disks`]): by by-id name, serial, world wide name,
//!    label (the probe of every disk and partition, or a GPT partition name) or as the
//!    machine's NVMe instance stores; none there is **missing**;
//! 3. refused (**failed**) when a disk is the boot disk, another volume's, read-only, or in
//!    use (mounted, swap, held by something else);
//! 4. several disks: their RAID 0 is assembled when they carry its superblocks, made when
//!    every one is empty (and the volume may be formatted), refused otherwise ([`super::raid`]);
//! 5. the device probed ([`crust_format::volume::probe`]): empty → formatted (unless
//!    `format = "never"`); the volume's file system → kept; anything else → refused, nothing
//!    written;
//! 6. checked, mounted, and grown when its device is larger than the file system
//!    ([`super::fs`]).
//!
//! Each outcome goes to `/run/crust/volumes/state/<name>` for PID 1 ([`super::status`]); a
//! changed outcome is printed on the console and, with the tools' output, appended to
//! `/var/log/crust/volumes.log`.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crust_format::volume::probe::{self, Content, Found, SAMPLE, Sample};
use crust_format::volume::{
    Disks, EC2_INSTANCE_STORE_MODEL, Format, QEMU_INSTANCE_STORE_SERIAL, QEMU_NVME_MODEL,
    VolumeSpec, array_name,
};

use super::disks::{Device, Inventory, Sysfs};
use super::fs::{self as filesystem, GROW_THRESHOLD};
use super::raid;
use super::status::{self, Outcome};
use crate::devnode::{self, DevNum, Kind};
use crate::{clock, console};

/// The helper's whole run; never returns.
pub fn main() -> ! {
    let code = match run(Path::new(super::RUN_DIR)) {
        Ok(()) => 0,
        Err(e) => {
            say(&format!("cannot set volumes up: {e}"));
            1
        }
    };
    std::process::exit(code)
}

/// What PID 1 handed over: the volumes in effect, in order, and the boot disk.
fn read_plan(dir: &Path) -> Result<(Vec<VolumeSpec>, String), String> {
    let order = std::fs::read_to_string(dir.join(super::ORDER_FILE))
        .map_err(|e| format!("cannot read {}: {e}", dir.join(super::ORDER_FILE).display()))?;
    let mut specs = Vec::new();
    for name in order.lines().filter(|l| !l.is_empty()) {
        let path = dir.join(super::PLAN_DIR).join(name);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        specs.push(VolumeSpec::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?);
    }
    let boot_disk = std::fs::read_to_string(dir.join(super::BOOT_DISK_FILE))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    Ok((specs, boot_disk))
}

fn run(dir: &Path) -> Result<(), String> {
    let (specs, boot_disk) = read_plan(dir)?;
    let mut ctx = Context {
        inv: Inventory::read(),
        sys: Sysfs::default(),
        boot_disk,
        claimed: BTreeMap::new(),
    };
    let state_dir = dir.join(super::STATE_DIR);
    for spec in claim_order(&specs) {
        let previous = status::read(&state_dir, &spec.name);
        let outcome = match (&previous, ctx.mounted_device(spec)) {
            // Mounted by an earlier run: the same outcome, unchanged, its disks its own.
            (Some(prev @ Outcome::Mounted { .. }), Some(device)) => {
                let disks = if device.starts_with("md") {
                    raid::members_of(&ctx.sys, &device)
                } else {
                    vec![device]
                };
                for d in disks {
                    ctx.claimed.insert(d, spec.name.clone());
                }
                prev.clone()
            }
            _ => set_up(spec, &mut ctx),
        };
        if previous.as_ref() != Some(&outcome) {
            report(spec, &outcome);
        }
        if let Err(e) = status::write(&state_dir, &spec.name, &outcome) {
            say(&format!("{}: cannot record its state: {e}", spec.name));
        }
    }
    Ok(())
}

/// Volumes that must never be formatted claim their disks first, then those naming their
/// disks, then the instance stores (which take what is left).
fn claim_order(specs: &[VolumeSpec]) -> Vec<&VolumeSpec> {
    let rank = |s: &VolumeSpec| match (&s.format, &s.disks) {
        (Format::Never, _) => 0,
        (_, Disks::InstanceStores) => 2,
        _ => 1,
    };
    let mut ordered: Vec<&VolumeSpec> = specs.iter().collect();
    ordered.sort_by_key(|s| rank(s));
    ordered
}

/// A console line (`volumes: …`) that also goes to the log.
fn say(line: &str) {
    console::note("volumes", line);
    log(line);
}

fn log(line: &str) {
    let stamped = format!("{} {line}\n", clock::format_utc(clock::now_unix()));
    let _ = crate::services::output::append_bounded(Path::new(super::LOG), &stamped);
}

fn report(spec: &VolumeSpec, outcome: &Outcome) {
    let line = match outcome {
        Outcome::Mounted { detail, .. } => {
            format!("{}: mounted on {}: {detail}", spec.name, spec.mount_point())
        }
        Outcome::Missing(why) => format!(
            "{}: missing: {why}; nothing was formatted; the services that mount it wait",
            spec.name
        ),
        Outcome::Failed(why) => format!(
            "{}: refused: {why}; the services that mount it wait",
            spec.name
        ),
    };
    say(&line);
}

/// What the run knows and has decided so far.
struct Context {
    inv: Inventory,
    sys: Sysfs,
    boot_disk: String,
    /// Disk (or partition) name → the volume that named it.
    claimed: BTreeMap<String, String>,
}

impl Context {
    /// The device mounted on the volume's mount point, if one is.
    fn mounted_device(&self, spec: &VolumeSpec) -> Option<String> {
        let mp = spec.mount_point();
        self.inv
            .mounted
            .iter()
            .find(|(_, at)| **at == mp)
            .map(|(dev, _)| dev.clone())
    }

    /// The disks a volume could use, for a "missing" message.
    fn disks_here(&self) -> String {
        let list: Vec<String> = self
            .inv
            .disks()
            .filter(|d| d.name != self.boot_disk)
            .map(Device::describe)
            .collect();
        if list.is_empty() {
            "this machine has no disk but the boot disk".into()
        } else {
            format!("disks here: {}", list.join("; "))
        }
    }
}

/// Reads the first and last MiB of `node` (a device of `size` bytes) and probes them.
pub(crate) fn probe_device(node: &Path, size: u64) -> Result<Content, String> {
    let file = File::open(node).map_err(|e| format!("cannot open {}: {e}", node.display()))?;
    let n = SAMPLE.min(usize::try_from(size).unwrap_or(SAMPLE));
    let mut head = vec![0u8; n];
    let mut tail = vec![0u8; n];
    file.read_exact_at(&mut head, 0)
        .and_then(|()| file.read_exact_at(&mut tail, size - n as u64))
        .map_err(|e| format!("cannot read {}: {e}", node.display()))?;
    Ok(probe::probe(&Sample {
        head: &head,
        tail: &tail,
        size,
    }))
}

/// `/dev/<name>`, made if devtmpfs has not (yet).
pub(crate) fn node_of(name: &str, dev: Option<DevNum>) -> PathBuf {
    let node = Path::new("/dev").join(name);
    if let Some(dev) = dev {
        let _ = devnode::ensure(&node, Kind::Block, dev, Duration::from_secs(1));
    }
    node
}

/// Whether a world wide name as written matches a device's `wwid`.
fn wwn_matches(wanted: &str, wwid: &str) -> bool {
    let w = wanted.to_ascii_lowercase();
    let w = w.strip_prefix("0x").unwrap_or(&w);
    let have = wwid.to_ascii_lowercase();
    have == w || have.split_once('.').is_some_and(|(_, id)| id == w)
}

/// Whether a disk is an NVMe instance store: EC2's by model; on QEMU (whose NVMe model
/// cannot be set), one whose serial starts with `instance-store`.
fn is_instance_store(d: &Device) -> bool {
    d.is_nvme()
        && d.partition.is_none()
        && match d.model.as_deref() {
            Some(EC2_INSTANCE_STORE_MODEL) => true,
            Some(QEMU_NVME_MODEL) => d
                .serial
                .as_deref()
                .is_some_and(|s| s.starts_with(QEMU_INSTANCE_STORE_SERIAL)),
            _ => false,
        }
}

/// The devices a volume names, found; `Err` with the outcome when they are not all there.
fn resolve(spec: &VolumeSpec, ctx: &Context) -> Result<Vec<Device>, Outcome> {
    let missing = |what: String| Outcome::Missing(format!("{what} ({})", ctx.disks_here()));
    let find_each = |items: &[String], what: &str, matches: &dyn Fn(&Device, &str) -> bool| {
        items
            .iter()
            .map(|item| {
                ctx.inv
                    .devices
                    .iter()
                    .find(|d| matches(d, item))
                    .cloned()
                    .ok_or_else(|| missing(format!("no disk has {what} {item}")))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    match &spec.disks {
        Disks::ById(names) => find_each(names, "the /dev/disk/by-id name", &|d, n| {
            d.by_id.iter().any(|b| b == n)
        }),
        Disks::Serial(serials) => find_each(serials, "serial", &|d, s| {
            d.partition.is_none() && d.serial.as_deref() == Some(s.trim())
        }),
        Disks::Wwn(wwns) => find_each(wwns, "world wide name", &|d, w| {
            d.partition.is_none() && d.wwid.as_deref().is_some_and(|id| wwn_matches(w, id))
        }),
        Disks::Label(label) => {
            let mut found = Vec::new();
            for d in &ctx.inv.devices {
                if ctx.inv.disk_of(&d.name) == ctx.boot_disk {
                    continue;
                }
                let by_part_name = d.part_name.as_deref() == Some(label.as_str());
                let by_fs = !by_part_name
                    && probe_device(&node_of(&d.name, d.dev), d.size).is_ok_and(|c| match c {
                        Content::Found(f) => f.label() == Some(label.as_str()),
                        _ => false,
                    });
                if by_part_name || by_fs {
                    found.push(d.clone());
                }
            }
            match found.len() {
                0 => Err(missing(format!(
                    "no file system or GPT partition is labelled {label:?}"
                ))),
                1 => Ok(found),
                _ => Err(Outcome::Failed(format!(
                    "label {label:?} is on {}: name the disk by serial, wwn or by-id instead",
                    found
                        .iter()
                        .map(|d| format!("/dev/{}", d.name))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ))),
            }
        }
        Disks::InstanceStores => {
            let stores: Vec<Device> = ctx
                .inv
                .disks()
                .filter(|d| is_instance_store(d) && d.name != ctx.boot_disk)
                .filter(|d| ctx.claimed.get(&d.name).is_none_or(|v| *v == spec.name))
                .cloned()
                .collect();
            if stores.is_empty() {
                Err(missing(
                    "this machine has no unused NVMe instance store".into(),
                ))
            } else {
                Ok(stores)
            }
        }
        Disks::Unnamed => Err(Outcome::Missing(
            "the image declares it without a disk; name its disk in user-data ([[volume]] \
             with this name and disk, serial, wwn, label or disks)"
                .into(),
        )),
    }
}

/// Sets one volume up; see the module's documentation for the steps.
fn set_up(spec: &VolumeSpec, ctx: &mut Context) -> Outcome {
    let mut devices = match resolve(spec, ctx) {
        Ok(d) => d,
        Err(outcome) => return outcome,
    };
    // The boot disk, another volume's disks, read-only disks.
    for d in &devices {
        let disk = ctx.inv.disk_of(&d.name).to_owned();
        if disk == ctx.boot_disk {
            return Outcome::Failed(format!(
                "/dev/{} is on the boot disk, which is never a volume",
                d.name
            ));
        }
        for name in [&d.name, &disk] {
            if let Some(other) = ctx.claimed.get(name.as_str())
                && *other != spec.name
            {
                return Outcome::Failed(format!("/dev/{} is volume {other}'s already", d.name));
            }
        }
        if d.read_only && !spec.read_only() {
            return Outcome::Failed(format!(
                "/dev/{} is read-only (mount it with mount-options = [\"ro\"] if that is meant)",
                d.name
            ));
        }
    }
    for d in &devices {
        ctx.claimed.insert(d.name.clone(), spec.name.clone());
    }
    // In use by anything but this volume's own array.
    let own_arrays: Vec<String> = devices
        .iter()
        .filter_map(|d| raid::array_of(&ctx.sys, &d.name))
        .collect();
    let mut left_alone = Vec::new();
    devices.retain(|d| match ctx.inv.in_use(&d.name, &own_arrays) {
        None => true,
        Some(why) => {
            left_alone.push(why);
            false
        }
    });
    if !left_alone.is_empty() && (spec.disks != Disks::InstanceStores || devices.is_empty()) {
        return Outcome::Failed(format!(
            "{}; a disk in use is never formatted or mounted a second time",
            left_alone.join("; ")
        ));
    }
    let mut notes: Vec<String> = left_alone
        .iter()
        .map(|why| format!("left alone: {why}"))
        .collect();

    let several = devices.len() > 1;
    let (target, target_size, made_array) = if several {
        match array(spec, &devices, ctx, &mut notes) {
            Ok(t) => t,
            Err(outcome) => return outcome,
        }
    } else {
        let d = &devices[0];
        (node_of(&d.name, d.dev), d.size, None)
    };
    finish(spec, &target, target_size, made_array, notes)
}

/// The RAID 0 of `devices`: assembled, made, or refused. Returns its node, its size, and
/// the RAID line when this run made it.
fn array(
    spec: &VolumeSpec,
    devices: &[Device],
    ctx: &Context,
    notes: &mut Vec<String>,
) -> Result<(PathBuf, u64, Option<String>), Outcome> {
    let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
    let running: Vec<Option<String>> = names.iter().map(|n| raid::array_of(&ctx.sys, n)).collect();
    let md_node = |md: &str| {
        let dev = DevNum::from_sysfs(&ctx.sys.block(md)).ok();
        let size = std::fs::read_to_string(ctx.sys.block(md).join("size"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 512;
        (node_of(md, dev), size)
    };
    if let Some(Some(md)) = running.first()
        && running.iter().all(|r| r.as_ref() == Some(md))
    {
        let (node, size) = md_node(md);
        notes.push(format!("RAID 0 {} (running)", raid::mdstat(md)));
        return Ok((node, size, None));
    }
    if running.iter().any(Option::is_some) {
        return Err(Outcome::Failed(format!(
            "its disks {} belong to different arrays",
            names.join(", ")
        )));
    }
    let wanted = array_name(&spec.name);
    let mut ours = Vec::new();
    let mut empty = Vec::new();
    let mut foreign = Vec::new();
    // A single store formatted directly (when it was the only empty one) keeps its file
    // system: the volume's name is its label.
    let mut own_fs = Vec::new();
    let mut raid_disks = 0;
    for d in devices {
        let node = node_of(&d.name, d.dev);
        match probe_device(&node, d.size) {
            Ok(Content::Found(Found::Md {
                name: Some(n),
                raid_disks: count,
                ..
            })) if n == wanted => {
                raid_disks = count;
                ours.push(node);
            }
            Ok(Content::Empty) => empty.push(node),
            Ok(Content::Found(f))
                if spec.filesystem.matches(&f)
                    && f.label() == Some(filesystem::label(spec.filesystem, &spec.name)) =>
            {
                own_fs.push((node, d.size));
            }
            Ok(other) => foreign.push(format!("/dev/{} holds {other}", d.name)),
            Err(e) => return Err(Outcome::Failed(e)),
        }
    }
    let instance_stores = spec.disks == Disks::InstanceStores;
    if instance_stores && ours.is_empty() && own_fs.len() == 1 {
        let (node, size) = own_fs.remove(0);
        notes.extend(foreign.iter().map(|f| format!("left alone: {f}")));
        if !empty.is_empty() {
            notes.push(format!(
                "left alone: {} (empty; the volume is the disk formatted before)",
                empty
                    .iter()
                    .map(|n| n.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        return Ok((node, size, None));
    }
    foreign.extend(own_fs.iter().map(|(n, _)| {
        format!(
            "{} holds a file system labelled like this volume",
            n.display()
        )
    }));
    if !foreign.is_empty() {
        if !instance_stores {
            return Err(Outcome::Failed(format!(
                "{}: refused, nothing was written",
                foreign.join("; ")
            )));
        }
        // Instance stores holding something else are not unused: left as they are.
        notes.extend(foreign.iter().map(|f| format!("left alone: {f}")));
    }
    let list = |nodes: &[PathBuf]| {
        nodes
            .iter()
            .map(|n| n.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (made, members) = if !ours.is_empty() {
        if ours.len() < raid_disks as usize {
            return Err(Outcome::Failed(format!(
                "array {wanted} has {raid_disks} members and only {} ({}) are here: a RAID 0 \
                 cannot run without all of them",
                ours.len(),
                list(&ours)
            )));
        }
        if !empty.is_empty() {
            notes.push(format!(
                "left alone: {} (empty, not a member of {wanted})",
                list(&empty)
            ));
        }
        raid::assemble(&spec.name, &ours).map_err(Outcome::Failed)?;
        (false, ours)
    } else {
        if empty.is_empty() {
            return Err(Outcome::Failed(format!(
                "no empty disk among {} to make its array from",
                names.join(", ")
            )));
        }
        if spec.format == Format::Never {
            return Err(Outcome::Failed(format!(
                "{} are empty and the volume says format = \"never\": its array is not made",
                list(&empty)
            )));
        }
        if empty.len() == 1 {
            // One empty instance store: no array, the disk itself.
            let d = devices
                .iter()
                .find(|d| node_of(&d.name, None) == empty[0])
                .map(|d| d.size)
                .unwrap_or(0);
            return Ok((empty[0].clone(), d, None));
        }
        say(&format!(
            "{}: {} are empty: making RAID 0 {wanted} of them (mdadm --create)",
            spec.name,
            list(&empty)
        ));
        raid::create(&spec.name, &empty).map_err(Outcome::Failed)?;
        (true, empty)
    };
    let first = members[0]
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let Some(md) = raid::array_of(&ctx.sys, &first) else {
        return Err(Outcome::Failed(format!(
            "mdadm ended but {} is in no running array",
            members[0].display()
        )));
    };
    let (node, size) = md_node(&md);
    let line = raid::mdstat(&md);
    let verb = if made { "made" } else { "assembled" };
    say(&format!("{}: RAID 0 {verb}: {line}", spec.name));
    Ok((node, size, made.then_some(line)))
}

/// Probes, formats if empty, checks, mounts and grows the volume's device.
fn finish(
    spec: &VolumeSpec,
    target: &Path,
    size: u64,
    made_array: Option<String>,
    mut notes: Vec<String>,
) -> Outcome {
    let fs = spec.filesystem;
    let content = match probe_device(target, size) {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(e),
    };
    let mut formatted = false;
    let fs_bytes = match &content {
        Content::Empty => {
            if spec.format == Format::Never {
                return Outcome::Failed(format!(
                    "{} is empty and the volume says format = \"never\"",
                    target.display()
                ));
            }
            say(&format!(
                "{}: {} ({}) is empty: making {fs} on it",
                spec.name,
                target.display(),
                super::size_text(size)
            ));
            match filesystem::make(fs, target, &spec.name) {
                Ok(command) => log(&format!("{}: {command}: done", spec.name)),
                Err(e) => return Outcome::Failed(e),
            }
            formatted = true;
            None
        }
        Content::Found(found) if fs.matches(found) => match found {
            Found::Ext { bytes, .. } | Found::Xfs { bytes, .. } => Some(*bytes),
            _ => None,
        },
        other => {
            let made = if made_array.is_some() {
                " (the new array's disks held it beyond their first and last MiB)"
            } else {
                ""
            };
            return Outcome::Failed(format!(
                "{} holds {other}{made}, not an empty disk or {fs}: nothing was written; \
                 clear the disk yourself only if what is on it may be lost",
                target.display()
            ));
        }
    };
    let checked = match filesystem::check(fs, target, spec.read_only()) {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(e),
    };
    let mount_point = PathBuf::from(spec.mount_point());
    if let Err(e) = filesystem::mount_on(fs, target, &mount_point, &spec.mount_options) {
        return Outcome::Failed(e);
    }
    let mut grown = None;
    if let Some(bytes) = fs_bytes
        && !spec.read_only()
        && size >= bytes.saturating_add(GROW_THRESHOLD)
    {
        match filesystem::grow(fs, target, &mount_point) {
            Ok(()) => grown = Some(bytes),
            Err(e) => notes.push(format!("not grown: {e}")),
        }
    }
    let mut detail = format!("{fs} on {}, {}", target.display(), super::size_text(size));
    if let Some(line) = &made_array {
        detail.push_str(&format!(" (RAID 0 made now: {line})"));
    }
    if formatted {
        detail.push_str("; formatted now (it was empty)");
    } else {
        detail.push_str("; not formatted (it holds its file system)");
    }
    detail.push_str(&format!("; {}", checked.describe()));
    if let Some(old) = grown {
        detail.push_str(&format!("; grown from {}", super::size_text(old)));
    }
    for n in notes {
        detail.push_str(&format!("; {n}"));
    }
    Outcome::Mounted {
        device: target.display().to_string(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_format::volume::Filesystem;

    fn spec(name: &str, disks: Disks, format: Format) -> VolumeSpec {
        VolumeSpec {
            name: name.into(),
            disks,
            filesystem: Filesystem::Ext4,
            mount_options: Vec::new(),
            format,
        }
    }

    #[test]
    fn volumes_that_must_not_be_formatted_claim_first() {
        let specs = [
            spec("cache", Disks::InstanceStores, Format::IfEmpty),
            spec("db", Disks::Serial(vec!["a".into()]), Format::IfEmpty),
            spec("old", Disks::Serial(vec!["a".into()]), Format::Never),
        ];
        let names: Vec<&str> = claim_order(&specs)
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["old", "db", "cache"]);
    }

    #[test]
    fn world_wide_names_match_in_every_written_form() {
        assert!(wwn_matches("0x5000C500A1B2C3D4", "naa.5000c500a1b2c3d4"));
        assert!(wwn_matches("naa.5000c500a1b2c3d4", "naa.5000c500a1b2c3d4"));
        assert!(wwn_matches("eui.0025388b71b1e2a5", "eui.0025388b71b1e2a5"));
        assert!(!wwn_matches("0x5000", "naa.5000c500a1b2c3d4"));
    }

    #[test]
    fn instance_stores_are_known_by_model_or_qemu_serial() {
        let disk = |name: &str, model: &str, serial: &str| Device {
            name: name.into(),
            parent: None,
            partition: None,
            size: 1 << 30,
            read_only: false,
            dev: None,
            serial: Some(serial.into()),
            model: Some(model.into()),
            wwid: None,
            part_name: None,
            by_id: Vec::new(),
            holders: Vec::new(),
        };
        assert!(is_instance_store(&disk(
            "nvme1n1",
            EC2_INSTANCE_STORE_MODEL,
            "AWS1234"
        )));
        assert!(!is_instance_store(&disk(
            "nvme1n1",
            "Amazon Elastic Block Store",
            "vol1"
        )));
        assert!(is_instance_store(&disk(
            "nvme2n1",
            QEMU_NVME_MODEL,
            "instance-store-2"
        )));
        assert!(!is_instance_store(&disk(
            "nvme0n1",
            QEMU_NVME_MODEL,
            "crust0"
        )));
        assert!(!is_instance_store(&disk(
            "vdb",
            EC2_INSTANCE_STORE_MODEL,
            "x"
        )));
    }
}
