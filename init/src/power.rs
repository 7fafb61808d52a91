//! The ACPI power button, as an evdev input device.
//!
//! A cloud "stop instance" (and QEMU's `system_powerdown`) presses the ACPI power button.
//! With the `button` and `evdev` modules loaded the kernel reports it as a key press on an
//! input device named "Power Button" (often two: the fixed `LNXPWRBN` and a `PNP0C0C`
//! device); nothing happens unless someone reads it, and that someone is PID 1.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::console;
use crate::devnode::{self, DevNum, Kind};
use crate::event::{Control, Task};
use crate::shutdown::Action;

/// Where the kernel lists input devices.
pub const SYS_INPUT: &str = "/sys/class/input";
/// The name the ACPI button driver gives its input devices.
pub const POWER_BUTTON_NAME: &str = "Power Button";

/// Size of `struct input_event` on 64-bit Linux: a 16-byte `timeval`, then `type` (u16),
/// `code` (u16) and `value` (i32).
pub const INPUT_EVENT_SIZE: usize = 24;
/// `EV_KEY`: a key or button changed state.
pub const EV_KEY: u16 = 1;
/// `KEY_POWER`.
pub const KEY_POWER: u16 = 116;

/// One input event, without its timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEvent {
    /// Event type (`EV_*`).
    pub kind: u16,
    /// Key or axis code.
    pub code: u16,
    /// For keys: 1 pressed, 0 released, 2 auto-repeat.
    pub value: i32,
}

impl InputEvent {
    /// Decodes one `struct input_event`.
    pub fn decode(raw: &[u8; INPUT_EVENT_SIZE]) -> Self {
        Self {
            kind: u16::from_ne_bytes([raw[16], raw[17]]),
            code: u16::from_ne_bytes([raw[18], raw[19]]),
            value: i32::from_ne_bytes([raw[20], raw[21], raw[22], raw[23]]),
        }
    }

    /// Whether this is the power key going down.
    pub fn is_power_press(&self) -> bool {
        self.kind == EV_KEY && self.code == KEY_POWER && self.value == 1
    }
}

/// Whether a buffer of whole events read from an evdev node holds a power key press.
pub fn has_power_press(buf: &[u8]) -> bool {
    buf.chunks_exact(INPUT_EVENT_SIZE)
        .filter_map(|c| c.try_into().ok())
        .any(|raw| InputEvent::decode(raw).is_power_press())
}

/// An open power button.
#[derive(Debug)]
pub struct PowerButton {
    /// The event node's name, such as `event0`.
    pub name: String,
    /// The node, opened non-blocking.
    pub file: File,
}

impl PowerButton {
    /// Reads what is pending; `Ok(true)` if the power key was pressed.
    pub fn pressed(&mut self) -> io::Result<bool> {
        // evdev hands out whole events only, so a buffer of whole events never splits one.
        let mut buf = [0u8; INPUT_EVENT_SIZE * 16];
        let mut pressed = false;
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => return Ok(pressed),
                Ok(n) => pressed |= has_power_press(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(pressed),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Finds and opens every power button the kernel shows now.
pub fn find_power_buttons() -> Vec<PowerButton> {
    let Ok(entries) = fs::read_dir(SYS_INPUT) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("input"))
        .filter(|n| {
            fs::read_to_string(Path::new(SYS_INPUT).join(n).join("name"))
                .is_ok_and(|name| name.trim() == POWER_BUTTON_NAME)
        })
        .collect();
    names.sort();
    names
        .iter()
        .filter_map(|input| open_event_node(&Path::new(SYS_INPUT).join(input)))
        .collect()
}

/// Opens the `eventN` node of an input device directory.
fn open_event_node(input: &Path) -> Option<PowerButton> {
    let event = fs::read_dir(input)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with("event"))?;
    let dev = DevNum::from_sysfs(&input.join(&event)).ok()?;
    let node = Path::new("/dev/input").join(&event);
    devnode::ensure(&node, Kind::Char, dev, Duration::from_millis(100)).ok()?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(&node)
        .ok()?;
    Some(PowerButton { name: event, file })
}

/// How long to keep looking for a power button that is not there at start (the `button`
/// driver may still be probing).
const RESCAN: Duration = Duration::from_secs(10);

/// The power buttons as a main-loop task: a press powers the machine off.
#[derive(Debug)]
pub struct PowerButtons {
    buttons: Vec<PowerButton>,
    rescan_until: Instant,
    next_rescan: Option<Instant>,
}

impl PowerButtons {
    /// Watches the power buttons present now, looking for late ones for a while.
    pub fn new() -> Self {
        let buttons = find_power_buttons();
        let now = Instant::now();
        Self {
            next_rescan: buttons.is_empty().then_some(now + Duration::from_secs(1)),
            buttons,
            rescan_until: now + RESCAN,
        }
    }

    /// The event nodes watched, for the console.
    pub fn describe(&self) -> String {
        if self.buttons.is_empty() {
            return "no power button yet".to_owned();
        }
        let names: Vec<&str> = self.buttons.iter().map(|b| b.name.as_str()).collect();
        format!("power button on {}", names.join(" "))
    }
}

impl Task for PowerButtons {
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.buttons.iter().map(|b| b.file.as_fd()).collect()
    }

    fn deadline(&self) -> Option<Instant> {
        self.next_rescan
    }

    fn run(&mut self, ready: &[bool], now: Instant) -> Control {
        let mut gone = Vec::new();
        for (i, button) in self.buttons.iter_mut().enumerate() {
            if !ready.get(i).copied().unwrap_or(false) {
                continue;
            }
            match button.pressed() {
                Ok(true) => {
                    return Control::Shutdown(Action::PowerOff, "power button pressed".into());
                }
                Ok(false) => {}
                Err(_) => gone.push(i),
            }
        }
        for i in gone.into_iter().rev() {
            self.buttons.remove(i);
        }
        if self.next_rescan.is_some_and(|t| t <= now) {
            self.buttons = find_power_buttons();
            self.next_rescan = if !self.buttons.is_empty() {
                None
            } else if now < self.rescan_until {
                Some(now + Duration::from_secs(1))
            } else {
                console::warning(
                    "no power button found: ACPI power-off requests are ignored \
                     (are button and evdev in the module list?)",
                );
                None
            };
        }
        Control::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> [u8; INPUT_EVENT_SIZE] {
        let mut raw = [0u8; INPUT_EVENT_SIZE];
        raw[..8].copy_from_slice(&1_700_000_000i64.to_ne_bytes());
        raw[8..16].copy_from_slice(&250_000i64.to_ne_bytes());
        raw[16..18].copy_from_slice(&kind.to_ne_bytes());
        raw[18..20].copy_from_slice(&code.to_ne_bytes());
        raw[20..24].copy_from_slice(&value.to_ne_bytes());
        raw
    }

    #[test]
    fn decodes_input_events() {
        let e = InputEvent::decode(&event(EV_KEY, KEY_POWER, 1));
        assert_eq!(
            e,
            InputEvent {
                kind: 1,
                code: 116,
                value: 1
            }
        );
        assert!(e.is_power_press());
    }

    #[test]
    fn only_a_power_key_press_counts() {
        // What the ACPI button sends: press, sync, release, sync.
        let mut buf = Vec::new();
        buf.extend_from_slice(&event(EV_KEY, KEY_POWER, 1));
        buf.extend_from_slice(&event(0, 0, 0));
        assert!(has_power_press(&buf));
        let release = [event(EV_KEY, KEY_POWER, 0), event(0, 0, 0)].concat();
        assert!(!has_power_press(&release));
        assert!(!has_power_press(&event(EV_KEY, 115, 1)));
        assert!(!has_power_press(&event(2, KEY_POWER, 1)));
        // A partial event is ignored rather than misread.
        assert!(!has_power_press(&event(EV_KEY, KEY_POWER, 1)[..20]));
    }

    #[test]
    fn reading_a_button_drains_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("event0");
        fs::write(
            &path,
            [event(EV_KEY, KEY_POWER, 1), event(0, 0, 0)].concat(),
        )
        .unwrap();
        let mut button = PowerButton {
            name: "event0".into(),
            file: File::open(&path).unwrap(),
        };
        assert!(button.pressed().unwrap());
        assert!(!button.pressed().unwrap());
    }
}
