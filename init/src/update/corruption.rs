//! When the verified root itself fails: dm-verity found a block of the running slot that
//! does not match its hash (a failing disk, or someone who wrote it offline).
//!
//! Stage 1 sets dm-verity up to fail the read (EIO) rather than restart the machine on the
//! spot, so that the init can act first. Whether the failure shows in stage 2 ([`Watch`], a
//! task that hears the kernel's uevent for the device) or in any failed boot step before
//! that ([`after_failure`], run by `main` before it reboots), the init asks device-mapper
//! whether the root device saw corruption (its status turns from `V` to `C`: the kernel's
//! word, whatever a uevent claims) and then, when the other slot holds a version the boot
//! loader can start, sets the running version aside: its UKI is renamed with a spent boot
//! counter (`+0`), which systemd-boot sorts last, and a note on the ESP says why. The
//! machine reboots into the other slot's version, whose update agent reports the note
//! ([`take_note`]) and reinstalls the set-aside version from the repository if it still
//! offers it, which rewrites the damaged slot. Without another version (the first image)
//! there is nothing to fall back to: the init reboots, as before.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use crust_format::Manifest;
use crust_format::boot_entry::{BootEntryName, Counter};
use crust_format::initrd::{self, boot_keys};
use crust_format::layout::Slot;
use crust_format::verity;
use nix::sys::socket::{
    AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recvfrom, socket,
};

use super::esp::Esp;
use super::install;
use crate::bootinfo::BootInfo;
use crate::console;
use crate::event::{Control, Task};
use crate::shutdown::Action;

/// Where the note for the next boot goes on the ESP.
pub const NOTE: &str = "EFI/crust/set-aside";
/// Largest note read back (the ESP is not verified).
const MAX_NOTE: u64 = 4096;
/// The uevent variable dm-verity sets on a corrupted block (`<type>,<block>`).
const ERR_BLOCK: &str = "DM_VERITY_ERR_BLOCK_NR=";
/// The kernel's uevent multicast group.
const UEVENT_GROUP: u32 = 1;

/// Whether the running root's dm-verity device has seen a corrupted block.
pub fn root_corrupted() -> bool {
    crate::dm::Control::open()
        .and_then(|c| c.status(verity::DM_NAME))
        .is_ok_and(|status| status.trim_start().starts_with('C'))
}

/// Run by `main` before it reboots after a failed step: if the root is corrupted, sets the
/// running version aside (when it can) and says what happens next.
pub fn after_failure() {
    if !root_corrupted() {
        return;
    }
    match set_aside("a block of the verified root failed its hash (see the kernel's line above)") {
        Ok(line) => console::warning(&line),
        Err(why) => console::warning(&format!(
            "verity: the root is corrupted and {why}; rebooting into the same version"
        )),
    }
}

/// Sets the running version aside so the other slot's version boots next: renames its UKI
/// with a spent counter and leaves a note. Returns the console line; an error says why it
/// could not (no other version, no ESP).
pub fn set_aside(why: &str) -> Result<String, String> {
    let boot = std::fs::read_to_string(initrd::RUN_BOOT)
        .map(|t| BootInfo::parse(&t))
        .map_err(|e| format!("the boot facts are unreadable ({e})"))?;
    if boot.get(boot_keys::DISK) == Some(crate::netboot::DISK) {
        return Err(
            "its images came from the network boot server, which serves them again: \
                    a network boot has no other slot to fall back to (serve intact images)"
                .into(),
        );
    }
    let manifest = std::fs::read(initrd::RUN_MANIFEST)
        .ok()
        .and_then(|b| Manifest::parse(&b).ok())
        .ok_or("the running manifest is unreadable")?;
    let slot = match boot.get(boot_keys::SLOT) {
        Some("a") => Slot::A,
        Some("b") => Slot::B,
        other => return Err(format!("the boot facts name no slot ({other:?})")),
    };
    let disk = boot
        .get(boot_keys::DISK)
        .ok_or("the boot facts name no disk")?;
    let target = install::find(disk, slot).map_err(|e| e.message)?;
    let esp = Esp::mount(&target.esp.node).map_err(|e| e.message)?;
    let entries = esp.entries();
    let running = entries
        .iter()
        .find(|e| e.name == manifest.name && e.version == manifest.version)
        .ok_or_else(|| format!("the ESP holds no UKI of {}", manifest.version))?;
    let fallback = entries
        .iter()
        .filter(|e| e.version != manifest.version)
        .find(|e| e.counter.is_none_or(|c| c.left > 0))
        .ok_or("the other slot holds no version to fall back to")?;
    esp.write_note(
        NOTE,
        &format!(
            "version={}\nslot={}\nwhy={}\n",
            manifest.version,
            slot.as_str(),
            why.replace(['\n', '\r'], " ")
        ),
    )
    .map_err(|e| e.message)?;
    let spent = BootEntryName {
        counter: Some(Counter {
            left: 0,
            done: None,
        }),
        ..running.blessed()
    };
    esp.rename(running, &spent).map_err(|e| e.message)?;
    Ok(format!(
        "verity: {} in slot {} is corrupted ({why}): set aside as {}; rebooting into {} in \
         slot {}",
        manifest.version,
        slot.as_str(),
        spent.file_name(),
        fallback.version,
        slot.other().as_str()
    ))
}

/// What a set-aside version's note says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The version set aside.
    pub version: String,
    /// Its slot.
    pub slot: String,
    /// Why.
    pub why: String,
}

/// The note a set-aside version left on the mounted ESP, removed once read, each field
/// cleaned to one line of printable text.
pub fn take_note(esp: &Esp) -> Option<Note> {
    let text = esp.take_note(NOTE, MAX_NOTE)?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(|v| v.chars().filter(|c| !c.is_control()).take(200).collect())
    };
    Some(Note {
        version: field("version")?,
        slot: field("slot")?,
        why: field("why")?,
    })
}

/// What a uevent says about dm-verity: `Some((type, block))` for a corruption report.
pub fn parse_uevent(message: &[u8]) -> Option<(String, u64)> {
    message.split(|&b| b == 0).find_map(|field| {
        let value = std::str::from_utf8(field).ok()?.strip_prefix(ERR_BLOCK)?;
        let (kind, block) = value.split_once(',')?;
        let kind = match kind {
            "0" => "data",
            "1" => "metadata",
            _ => "unknown",
        };
        Some((kind.to_owned(), block.parse().ok()?))
    })
}

/// How often the task asks device-mapper even without a uevent (a full socket buffer
/// drops uevents; the device's status keeps the corruption).
const POLL: Duration = Duration::from_secs(15);

/// The stage-2 task that hears dm-verity's corruption reports (kernel uevents, and the
/// device's status every [`POLL`]) and, once device-mapper confirms the root is
/// corrupted, sets the running version aside and reboots.
#[derive(Debug)]
pub struct Watch {
    socket: Option<OwnedFd>,
    /// When the status is asked next.
    next_poll: Instant,
    /// Set once the root was found corrupted: the reboot starts at this instant (the loop
    /// asks the task again so the console line is out first).
    pending: Option<Instant>,
}

impl Watch {
    /// Opens the uevent socket (without one, the task does nothing and says so).
    pub fn new() -> Self {
        let socket = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkKObjectUEvent,
        )
        .and_then(|fd| {
            bind(fd.as_raw_fd(), &NetlinkAddr::new(0, UEVENT_GROUP))?;
            Ok(fd)
        });
        let socket = socket
            .map_err(|e| {
                console::warning(&format!(
                    "verity: cannot hear the kernel's uevents ({}); the root device's status \
                     is asked every {} s instead",
                    e.desc(),
                    POLL.as_secs()
                ))
            })
            .ok();
        Self {
            socket,
            next_poll: Instant::now() + POLL,
            pending: None,
        }
    }

    /// Reads every queued uevent; the first corruption report, if any.
    fn drain(&self) -> Option<(String, u64)> {
        let fd = self.socket.as_ref()?;
        let mut buf = [0u8; 8192];
        let mut found = None;
        // Bounded: a flood of uevents is read a batch per wake-up, never for ever.
        for _ in 0..64 {
            match recvfrom::<NetlinkAddr>(fd.as_raw_fd(), &mut buf) {
                Ok((n, from)) => {
                    // Only the kernel (port 0) speaks for device-mapper.
                    if from.is_some_and(|a| a.pid() != 0) {
                        continue;
                    }
                    if found.is_none() {
                        found = parse_uevent(&buf[..n.min(buf.len())]);
                    }
                }
                Err(_) => break,
            }
        }
        found
    }
}

impl Task for Watch {
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.socket.iter().map(|s| s.as_fd()).collect()
    }

    fn deadline(&self) -> Option<Instant> {
        Some(self.pending.unwrap_or(self.next_poll))
    }

    fn run(&mut self, _ready: &[bool], now: Instant) -> Control {
        if let Some(at) = self.pending {
            if now >= at {
                return Control::Shutdown(Action::Reboot, "dm-verity: corrupted root".into());
            }
            return Control::Continue;
        }
        let heard = self.drain();
        if heard.is_some() {
            crate::observe::status::verity_report(root_corrupted());
        }
        let polled = now >= self.next_poll;
        if polled {
            self.next_poll = now + POLL;
        }
        if (heard.is_none() && !polled) || !root_corrupted() {
            return Control::Continue;
        }
        let why = match heard {
            Some((kind, block)) => format!("dm-verity: {kind} block {block} is corrupted"),
            None => "dm-verity reports a corrupted block".into(),
        };
        let line = match set_aside(&why) {
            Ok(line) => line,
            Err(e) => format!("verity: the root is corrupted ({why}) and {e}; rebooting"),
        };
        console::warning(&line);
        self.pending = Some(now + Duration::from_millis(100));
        Control::Continue
    }

    fn stop(&mut self, _budget: Duration) {}
}

impl Default for Watch {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verity_uevents_name_the_block() {
        let msg = b"change@/devices/virtual/block/dm-0\0ACTION=change\0\
                    DEVPATH=/devices/virtual/block/dm-0\0SUBSYSTEM=block\0\
                    DM_VERITY_ERR_BLOCK_NR=0,1234\0DEVNAME=dm-0\0SEQNUM=1822\0";
        assert_eq!(parse_uevent(msg), Some(("data".into(), 1234)));
        let meta = b"change@/x\0DM_VERITY_ERR_BLOCK_NR=1,7\0";
        assert_eq!(parse_uevent(meta), Some(("metadata".into(), 7)));
        assert_eq!(parse_uevent(b"add@/devices/x\0ACTION=add\0"), None);
        assert_eq!(parse_uevent(b"DM_VERITY_ERR_BLOCK_NR=0,lots\0"), None);
        assert_eq!(parse_uevent(&[0xff; 64]), None);
    }
}
