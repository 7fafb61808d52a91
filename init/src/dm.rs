//! Device-mapper, spoken directly: the ioctls of `<linux/dm-ioctl.h>` on
//! `/dev/mapper/control`, enough to create one device with one target.
//!
//! libdevmapper would need bindgen and a C library in a static PID 1; the interface is a
//! stable kernel ABI (version 4 since 2002), and the few commands needed are short. The
//! structs mirror the kernel's byte for byte (the tests check every offset), and a single
//! function issues the ioctl on a buffer that holds the whole request.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;

use crate::devnode::{self, DevNum, Kind};
use crate::error::{Error, Result};

/// The control node (devtmpfs names it after the misc device's `nodename`).
pub const CONTROL: &str = "/dev/mapper/control";
/// The control device in sysfs; present once `dm-mod` is loaded.
const CONTROL_SYSFS: &str = "/sys/class/misc/device-mapper";

/// The interface version this code speaks: major 4 is the only one; minor 0 asks for
/// nothing newer than the 2002 interface.
const INTERFACE_VERSION: [u32; 3] = [4, 0, 0];

const DM_IOCTL_TYPE: u32 = 0xfd;
const DM_VERSION_CMD: u32 = 0;
const DM_DEV_CREATE_CMD: u32 = 3;
const DM_DEV_REMOVE_CMD: u32 = 4;
const DM_DEV_SUSPEND_CMD: u32 = 6;
const DM_TABLE_LOAD_CMD: u32 = 9;
const DM_TABLE_STATUS_CMD: u32 = 12;

/// Table flag: the device is read-only (its targets open their devices read-only).
const DM_READONLY_FLAG: u32 = 1 << 0;

const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
const DM_MAX_TYPE_NAME: usize = 16;

/// `struct dm_ioctl`: the header of every request and reply.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct DmIoctl {
    version: [u32; 3],
    /// Bytes of the whole request, this header included.
    data_size: u32,
    /// Offset of the payload (the first target spec) from the start of the header.
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    /// Device number in the kernel's `huge_encode_dev` layout.
    dev: u64,
    name: [u8; DM_NAME_LEN],
    uuid: [u8; DM_UUID_LEN],
    data: [u8; 7],
}

/// `struct dm_target_spec`, followed in memory by the target's NUL-terminated parameters.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    /// Offset from this spec to the next one (8-byte aligned).
    next: u32,
    target_type: [u8; DM_MAX_TYPE_NAME],
}

/// Room for one target's parameters; a verity table line is about 200 bytes, a crypt line
/// with its 512-bit key about 180.
const PARAMS_MAX: usize = 4096 - size_of::<DmIoctl>() - size_of::<DmTargetSpec>();

/// A whole request: header, then at most one target and its parameters. The kernel is
/// told the used length in `header.data_size`; the rest is never read.
#[repr(C)]
#[derive(Debug, Clone)]
struct Message {
    header: DmIoctl,
    target: DmTargetSpec,
    params: [u8; PARAMS_MAX],
}

/// `_IOWR(DM_IOCTL, nr, struct dm_ioctl)`, spelled out as `<asm-generic/ioctl.h>` does.
const fn request_code(nr: u32) -> u32 {
    const IOC_READ_WRITE: u32 = 3;
    (IOC_READ_WRITE << 30) | ((size_of::<DmIoctl>() as u32) << 16) | (DM_IOCTL_TYPE << 8) | nr
}

/// Copies `s` into a NUL-terminated fixed field, or `None` if it does not fit.
fn c_field<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut field = [0u8; N];
    if s.len() >= N || s.contains('\0') {
        return None;
    }
    field[..s.len()].copy_from_slice(s.as_bytes());
    Some(field)
}

/// One target of a table.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// First sector of the device the target covers.
    pub start: u64,
    /// Length in 512-byte sectors.
    pub length: u64,
    /// Target type, such as `verity`.
    pub kind: &'a str,
    /// The target's parameter line.
    pub params: &'a str,
}

impl Message {
    /// A request about the device `name` (and, when creating it, `uuid`).
    fn new(name: &str, uuid: &str, flags: u32) -> std::result::Result<Self, String> {
        let header = DmIoctl {
            version: INTERFACE_VERSION,
            data_size: size_of::<DmIoctl>() as u32,
            data_start: size_of::<DmIoctl>() as u32,
            target_count: 0,
            open_count: 0,
            flags,
            event_nr: 0,
            padding: 0,
            dev: 0,
            name: c_field(name).ok_or_else(|| format!("device name {name:?} is too long"))?,
            uuid: c_field(uuid).ok_or_else(|| format!("device uuid {uuid:?} is too long"))?,
            data: [0; 7],
        };
        Ok(Self {
            header,
            target: DmTargetSpec {
                sector_start: 0,
                length: 0,
                status: 0,
                next: 0,
                target_type: [0; DM_MAX_TYPE_NAME],
            },
            params: [0; PARAMS_MAX],
        })
    }

    /// Adds the (single) target of a table load.
    fn with_target(mut self, target: &Target<'_>) -> std::result::Result<Self, String> {
        let params = target.params.as_bytes();
        if params.len() >= PARAMS_MAX || params.contains(&0) {
            return Err(format!("{} bytes of target parameters", params.len()));
        }
        self.target = DmTargetSpec {
            sector_start: target.start,
            length: target.length,
            status: 0,
            // The kernel wants the next spec 8-byte aligned; with one target this only
            // records where the parameters end.
            next: (size_of::<DmTargetSpec>() + (params.len() + 1).next_multiple_of(8)) as u32,
            target_type: c_field(target.kind)
                .ok_or_else(|| format!("target type {:?} is too long", target.kind))?,
        };
        self.params = [0; PARAMS_MAX];
        self.params[..params.len()].copy_from_slice(params);
        self.header.target_count = 1;
        self.header.data_size = size_of::<DmIoctl>() as u32 + self.target.next;
        Ok(self)
    }
}

/// Issues one device-mapper ioctl. The only `unsafe` of the init.
fn ioctl(control: &File, nr: u32, msg: &mut Message) -> std::result::Result<(), Errno> {
    // The kernel reads and writes `data_size` bytes from the start of the header; never
    // let that reach past the buffer, whatever a caller did.
    if msg.header.data_size as usize > size_of::<Message>()
        || (msg.header.data_size as usize) < size_of::<DmIoctl>()
    {
        return Err(Errno::EINVAL);
    }
    // SAFETY: `msg` is an exclusively borrowed, fully initialised `#[repr(C)]` value that
    // starts with a `struct dm_ioctl` (layout checked against the kernel header by the
    // tests) and is 8-byte aligned. The request code encodes `sizeof(struct dm_ioctl)`.
    // The kernel accesses at most `header.data_size` bytes from the pointer, which the
    // check above keeps within `size_of::<Message>()`, and retains no pointer after the
    // call returns.
    let rc = unsafe {
        nix::libc::ioctl(
            control.as_raw_fd(),
            request_code(nr) as nix::sys::ioctl::ioctl_num_type,
            std::ptr::from_mut(msg).cast::<nix::libc::c_void>(),
        )
    };
    Errno::result(rc).map(drop)
}

/// An open `/dev/mapper/control`.
#[derive(Debug)]
pub struct Control(File);

impl Control {
    /// Opens the control node, creating it from sysfs if devtmpfs has not.
    pub fn open() -> Result<Self> {
        if !Path::new(CONTROL).exists() {
            let dev = DevNum::from_sysfs(Path::new(CONTROL_SYSFS)).map_err(|e| {
                Error::new(
                    "verity",
                    format!("device-mapper is not available ({CONTROL_SYSFS}: {e})"),
                )
                .advice("add dm-mod and dm-verity to the image's module list")
            })?;
            devnode::ensure(
                Path::new(CONTROL),
                Kind::Char,
                dev,
                Duration::from_millis(200),
            )
            .map_err(|e| Error::new("verity", format!("cannot create {CONTROL}: {e}")))?;
        }
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONTROL)
            .map(Self)
            .map_err(|e| Error::new("verity", format!("cannot open {CONTROL}: {e}")))
    }

    fn call(&self, what: &str, nr: u32, msg: &mut Message) -> Result<()> {
        ioctl(&self.0, nr, msg).map_err(|errno| {
            Error::new(
                "verity",
                format!("device-mapper {what} failed: {}", errno.desc()),
            )
        })
    }

    /// The kernel's interface version.
    pub fn version(&self) -> Result<[u32; 3]> {
        let mut msg = Message::new("", "", 0).map_err(|e| Error::new("verity", e))?;
        self.call("version", DM_VERSION_CMD, &mut msg)?;
        Ok(msg.header.version)
    }

    /// Creates an empty device; returns its device number.
    pub fn create(&self, name: &str, uuid: &str) -> Result<DevNum> {
        let mut msg = Message::new(name, uuid, 0).map_err(|e| Error::new("verity", e))?;
        self.call(&format!("create of {name:?}"), DM_DEV_CREATE_CMD, &mut msg)?;
        Ok(DevNum::from_huge(msg.header.dev))
    }

    /// Loads a one-target table into the device's inactive slot, with the table flags
    /// given ([`DM_READONLY_FLAG`], or `0`: read-write). The request buffer is wiped
    /// afterwards: a `crypt` table carries its key.
    fn load_table_with(&self, name: &str, target: &Target<'_>, flags: u32) -> Result<()> {
        let mut msg = Message::new(name, "", flags)
            .and_then(|m| m.with_target(target))
            .map_err(|e| Error::new("verity", e))?;
        let result = self.call(
            &format!("table load of {name:?} ({} target)", target.kind),
            DM_TABLE_LOAD_CMD,
            &mut msg,
        );
        zeroize::Zeroize::zeroize(&mut msg.params);
        result
    }

    /// Resumes the device, which makes the loaded table live.
    pub fn resume(&self, name: &str) -> Result<DevNum> {
        // DM_DEV_SUSPEND without DM_SUSPEND_FLAG means resume.
        let mut msg = Message::new(name, "", 0).map_err(|e| Error::new("verity", e))?;
        self.call(&format!("resume of {name:?}"), DM_DEV_SUSPEND_CMD, &mut msg)?;
        Ok(DevNum::from_huge(msg.header.dev))
    }

    /// The status line of the device's (first) target, as `dmsetup status` shows it
    /// after the sector range and type: for verity, `V` while every block read verified and
    /// `C` once one did not.
    pub fn status(&self, name: &str) -> Result<String> {
        let mut msg = Message::new(name, "", 0).map_err(|e| Error::new("verity", e))?;
        // The reply is written from the header on: give the kernel the whole buffer.
        msg.header.data_size = size_of::<Message>() as u32;
        self.call(
            &format!("status of {name:?}"),
            DM_TABLE_STATUS_CMD,
            &mut msg,
        )?;
        if msg.header.target_count == 0 || msg.header.data_start as usize != size_of::<DmIoctl>() {
            return Err(Error::new(
                "verity",
                format!("device-mapper reports no target status for {name:?}"),
            ));
        }
        let end = msg.params.iter().position(|&b| b == 0).unwrap_or(0);
        Ok(String::from_utf8_lossy(&msg.params[..end]).into_owned())
    }

    /// Removes a device.
    pub fn remove(&self, name: &str) -> Result<()> {
        let mut msg = Message::new(name, "", 0).map_err(|e| Error::new("verity", e))?;
        self.call(&format!("remove of {name:?}"), DM_DEV_REMOVE_CMD, &mut msg)
    }
}

/// Creates device `name` with one live, read-only target; returns its device number.
pub fn create_device(name: &str, uuid: &str, target: &Target<'_>) -> Result<DevNum> {
    create(name, uuid, target, DM_READONLY_FLAG)
}

/// Creates device `name` with one live, read-write target (dm-crypt's); returns its device
/// number.
pub fn create_writable_device(name: &str, uuid: &str, target: &Target<'_>) -> Result<DevNum> {
    create(name, uuid, target, 0)
}

fn create(name: &str, uuid: &str, target: &Target<'_>, flags: u32) -> Result<DevNum> {
    let control = Control::open()?;
    let version = control.version()?;
    if version[0] != INTERFACE_VERSION[0] {
        return Err(Error::new(
            "verity",
            format!("device-mapper speaks interface {version:?}, not 4.x"),
        ));
    }
    let dev = control.create(name, uuid)?;
    let live = control
        .load_table_with(name, target, flags)
        .and_then(|()| control.resume(name));
    if let Err(e) = live {
        // Leave nothing half-made behind; the error that matters is the first one.
        let _ = control.remove(name);
        return Err(e);
    }
    Ok(dev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    // Offsets and sizes from <linux/dm-ioctl.h> on x86_64 (checked with offsetof in C).
    #[test]
    fn dm_ioctl_matches_the_kernel_layout() {
        assert_eq!(size_of::<DmIoctl>(), 312);
        assert_eq!(align_of::<DmIoctl>(), 8);
        assert_eq!(offset_of!(DmIoctl, version), 0);
        assert_eq!(offset_of!(DmIoctl, data_size), 12);
        assert_eq!(offset_of!(DmIoctl, data_start), 16);
        assert_eq!(offset_of!(DmIoctl, target_count), 20);
        assert_eq!(offset_of!(DmIoctl, open_count), 24);
        assert_eq!(offset_of!(DmIoctl, flags), 28);
        assert_eq!(offset_of!(DmIoctl, event_nr), 32);
        assert_eq!(offset_of!(DmIoctl, padding), 36);
        assert_eq!(offset_of!(DmIoctl, dev), 40);
        assert_eq!(offset_of!(DmIoctl, name), 48);
        assert_eq!(offset_of!(DmIoctl, uuid), 176);
        assert_eq!(offset_of!(DmIoctl, data), 305);
    }

    #[test]
    fn dm_target_spec_matches_the_kernel_layout() {
        assert_eq!(size_of::<DmTargetSpec>(), 40);
        assert_eq!(offset_of!(DmTargetSpec, sector_start), 0);
        assert_eq!(offset_of!(DmTargetSpec, length), 8);
        assert_eq!(offset_of!(DmTargetSpec, status), 16);
        assert_eq!(offset_of!(DmTargetSpec, next), 20);
        assert_eq!(offset_of!(DmTargetSpec, target_type), 24);
        // The target spec sits right where data_start says the payload begins.
        assert_eq!(offset_of!(Message, target), 312);
        assert_eq!(offset_of!(Message, params), 352);
        assert_eq!(size_of::<Message>(), 4096);
        assert_eq!(align_of::<Message>(), 8);
    }

    #[test]
    fn request_codes_are_iowr_of_dm_ioctl() {
        // DM_VERSION, DM_DEV_CREATE, DM_DEV_REMOVE, DM_DEV_SUSPEND, DM_TABLE_LOAD as the C
        // headers expand them.
        assert_eq!(request_code(DM_VERSION_CMD), 0xc138_fd00);
        assert_eq!(request_code(DM_DEV_CREATE_CMD), 0xc138_fd03);
        assert_eq!(request_code(DM_DEV_REMOVE_CMD), 0xc138_fd04);
        assert_eq!(request_code(DM_DEV_SUSPEND_CMD), 0xc138_fd06);
        assert_eq!(request_code(DM_TABLE_LOAD_CMD), 0xc138_fd09);
    }

    #[test]
    fn create_request_carries_name_and_uuid() {
        let msg = Message::new("root", "CRUST-VERITY-ab", 0).unwrap();
        assert_eq!(msg.header.version, [4, 0, 0]);
        assert_eq!(msg.header.data_size, 312);
        assert_eq!(msg.header.data_start, 312);
        assert_eq!(&msg.header.name[..5], b"root\0");
        assert_eq!(&msg.header.uuid[..16], b"CRUST-VERITY-ab\0");
        assert_eq!(msg.header.target_count, 0);
    }

    #[test]
    fn table_load_lays_out_one_target() {
        let params = "1 254:2 254:3 4096 4096 300 1 sha256 ab cd";
        let msg = Message::new("root", "", DM_READONLY_FLAG)
            .unwrap()
            .with_target(&Target {
                start: 0,
                length: 2400,
                kind: "verity",
                params,
            })
            .unwrap();
        let padded = (params.len() + 1).next_multiple_of(8);
        assert_eq!(msg.header.flags, DM_READONLY_FLAG);
        assert_eq!(msg.header.target_count, 1);
        assert_eq!(msg.header.data_size as usize, 312 + 40 + padded);
        assert_eq!(msg.header.data_size % 8, 0);
        assert_eq!(msg.target.length, 2400);
        assert_eq!(msg.target.next as usize, 40 + padded);
        assert_eq!(&msg.target.target_type[..7], b"verity\0");
        assert_eq!(&msg.params[..params.len()], params.as_bytes());
        assert_eq!(msg.params[params.len()], 0);
    }

    #[test]
    fn refuses_fields_that_do_not_fit() {
        assert!(Message::new(&"x".repeat(128), "", 0).is_err());
        assert!(Message::new(&"x".repeat(127), &"u".repeat(128), 0).is_ok());
        assert!(Message::new("a\0b", "", 0).is_err());
        let long = "1".repeat(PARAMS_MAX);
        let target = Target {
            start: 0,
            length: 8,
            kind: "verity",
            params: &long,
        };
        assert!(
            Message::new("root", "", 0)
                .unwrap()
                .with_target(&target)
                .is_err()
        );
        let target = Target {
            kind: "a-very-long-target-type",
            params: "",
            ..target
        };
        assert!(
            Message::new("root", "", 0)
                .unwrap()
                .with_target(&target)
                .is_err()
        );
    }

    #[test]
    fn the_ioctl_refuses_an_oversized_length() {
        let file = File::open("/dev/null").unwrap();
        let mut msg = Message::new("root", "", 0).unwrap();
        msg.header.data_size = 4097;
        assert_eq!(ioctl(&file, DM_VERSION_CMD, &mut msg), Err(Errno::EINVAL));
        // /dev/null knows no device-mapper requests.
        msg.header.data_size = 312;
        assert_eq!(ioctl(&file, DM_VERSION_CMD, &mut msg), Err(Errno::ENOTTY));
    }
}
