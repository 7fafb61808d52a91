//! One virtual machine: the QEMU command line for a Crust image, and a handle to watch and
//! control the running machine.
//!
//! The machine is a q35 PC with OVMF, the image on a virtio or NVMe disk, user-mode
//! networking with optional port forwards, the serial console on QEMU's stdio, and a QMP
//! socket. `-nodefaults` keeps the firmware from trying a CD-ROM and network boot first, and
//! the NIC carries no option ROM, which saves seconds of firmware time under TCG.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use crust_format::phase::{self, Phase, PhaseLine};

use crate::Accel;
use crate::console::{Console, WaitError};
use crate::firmware::Firmware;
use crate::qmp::Qmp;

/// How the boot disk is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskBus {
    /// virtio-blk (`/dev/vda`).
    Virtio,
    /// NVMe (`/dev/nvme0n1`).
    Nvme,
}

/// A writable data disk of a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDrive {
    /// The image (raw, or qcow2 by extension).
    pub path: PathBuf,
    /// virtio-blk (the guest's `serial` file) or NVMe (its controller's serial; model
    /// `QEMU NVMe Ctrl`).
    pub bus: DiskBus,
    /// The serial number the guest sees (virtio keeps at most 20 characters).
    pub serial: String,
}

impl DataDrive {
    /// Virtio disks for `paths`, with the serial numbers `crust-disk1`, `crust-disk2`, ...
    /// (an installer's targets, `cargo xtask qemu --disks N`).
    pub fn numbered(paths: &[PathBuf]) -> Vec<Self> {
        paths
            .iter()
            .enumerate()
            .map(|(i, path)| Self {
                path: path.clone(),
                bus: DiskBus::Virtio,
                serial: format!("crust-disk{}", i + 1),
            })
            .collect()
    }
}

/// A machine to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// The disk image (raw, or qcow2 by extension).
    pub disk: PathBuf,
    /// The disk's bus.
    pub bus: DiskBus,
    /// The accelerator.
    pub accel: Accel,
    /// Firmware and variable store.
    pub firmware: Firmware,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// TCP port forwards, host port to guest port.
    pub forwards: Vec<(u16, u16)>,
    /// Where QEMU listens for QMP.
    pub qmp_socket: Option<PathBuf>,
    /// Exit instead of rebooting (tests that must see a reboot as the end).
    pub no_reboot: bool,
    /// Limit the boot disk's writes to this many bytes per second (a slow disk, so a test
    /// can cut the power in the middle of a long write).
    pub write_limit: Option<u64>,
    /// Further raw disk images, attached read-only as virtio disks after the boot disk
    /// (NoCloud seeds, [`crate::seed`]).
    pub extra_drives: Vec<PathBuf>,
    /// Writable data disks (raw, or qcow2 by extension) with serial numbers, after the
    /// extra drives: what a host's data volumes are made of, an installer's targets
    /// ([`DataDrive::numbered`]), a network-booted host's state disk.
    pub data_drives: Vec<DataDrive>,
    /// User-network `guestfwd` rules, as QEMU takes them (the IMDS emulator's,
    /// [`crate::imds::Emulator::guestfwd`]).
    pub guestfwds: Vec<String>,
    /// `-smbios` arguments (such as [`crate::imds::EC2_SMBIOS`]).
    pub smbios: Vec<String>,
    /// The user network's address range (QEMU's `net=`) instead of 10.0.2.0/24; a
    /// `guestfwd` address must lie inside it ([`crate::imds::NETWORK`]).
    pub user_network: Option<String>,
    /// Let [`Vm::type_text`] type on the serial console (QEMU's standard input becomes a
    /// pipe instead of nothing).
    pub console_input: bool,
    /// A TPM 2.0: the control socket of the swtpm behind it ([`crate::tpm::Swtpm`]).
    pub tpm: Option<PathBuf>,
    /// An ISO attached as a CD-ROM (virtio-scsi), first in the firmware's boot order; the
    /// boot disk then comes second (the installer ISO, docs/METAL.md).
    pub cdrom: Option<PathBuf>,
    /// A network boot: QEMU's user network serves this folder by TFTP and names the file
    /// (relative to it) as the DHCP boot file, for the firmware's UEFI PXE. With an empty
    /// [`Config::disk`] path the machine has no disk at all.
    pub tftp: Option<(PathBuf, String)>,
    /// A network of real servers instead of QEMU's user network: the NIC is this tap
    /// device, QEMU runs in its network namespace (`ip netns exec`), and the NIC is in the
    /// firmware's boot order (a network boot: UEFI PXE or HTTP boot from that network's
    /// DHCP server).
    pub tap: Option<Tap>,
    /// Firmware settings through QEMU's `-fw_cfg name=…,string=…` (OVMF reads
    /// `opt/org.tianocore/IPv4PXESupport` and `…/IPv6Support`, among others).
    pub fw_cfg: Vec<(String, String)>,
}

/// A tap device in a network namespace ([`Config::tap`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tap {
    /// The namespace (`ip netns add`), where QEMU runs.
    pub netns: String,
    /// The tap device's name in it (`ip tuntap add … mode tap`).
    pub ifname: String,
}

impl Config {
    /// A machine with defaults: virtio disk, 1 GiB, 2 CPUs, no forwards.
    pub fn new(disk: &Path, accel: Accel, firmware: Firmware) -> Self {
        Self {
            disk: disk.to_path_buf(),
            bus: DiskBus::Virtio,
            accel,
            firmware,
            memory_mib: 1024,
            cpus: 2,
            forwards: Vec::new(),
            qmp_socket: None,
            no_reboot: false,
            write_limit: None,
            extra_drives: Vec::new(),
            data_drives: Vec::new(),
            guestfwds: Vec::new(),
            smbios: Vec::new(),
            user_network: None,
            console_input: false,
            tpm: None,
            cdrom: None,
            tftp: None,
            tap: None,
            fw_cfg: Vec::new(),
        }
    }

    /// The QEMU command; `interactive` puts the serial console and QEMU's monitor on the
    /// terminal (Ctrl-A X quits), otherwise the console goes to stdout for capture.
    pub fn command(&self, interactive: bool) -> Command {
        let mut cmd = match &self.tap {
            Some(tap) => {
                let mut ip = Command::new("ip");
                ip.args(["netns", "exec", &tap.netns, "qemu-system-x86_64"]);
                ip
            }
            None => Command::new("qemu-system-x86_64"),
        };
        cmd.args(["-machine", "q35"]);
        match self.accel {
            Accel::Kvm => {
                cmd.args(["-accel", "kvm", "-cpu", "host"]);
            }
            // One host thread runs every vCPU in turn. With a thread per vCPU (QEMU's
            // default), a guest kernel patching its own code across CPUs (static keys
            // switched on by the first memory cgroup, when crun starts a service) now and
            // then livelocks in the int3 of `text_poke_bp` until the soft-lockup watchdog
            // fires; on two host cores the extra threads bought little speed anyway.
            Accel::Tcg => {
                cmd.args(["-accel", "tcg,thread=single"]);
            }
        }
        cmd.args([
            "-m",
            &self.memory_mib.to_string(),
            "-smp",
            &self.cpus.to_string(),
        ]);
        cmd.args(["-nodefaults", "-no-user-config", "-display", "none"]);
        cmd.arg("-drive").arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            self.firmware.code.display()
        ));
        cmd.arg("-drive").arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            self.firmware.vars.display()
        ));
        let format = if self.disk.extension().is_some_and(|e| e == "qcow2") {
            "qcow2"
        } else {
            "raw"
        };
        let throttle = self
            .write_limit
            .map(|bps| format!(",throttling.bps-write={bps}"))
            .unwrap_or_default();
        let diskless = self.disk.as_os_str().is_empty();
        if !diskless {
            cmd.arg("-drive").arg(format!(
                "if=none,id=disk0,format={format},file={}{throttle}",
                self.disk.display()
            ));
        }
        let disk_index = if let Some(iso) = &self.cdrom {
            let path = iso.display().to_string().replace(',', ",,");
            cmd.arg("-drive").arg(format!(
                "if=none,id=cd0,format=raw,media=cdrom,readonly=on,file={path}"
            ));
            cmd.args([
                "-device",
                "virtio-scsi-pci,id=scsi0",
                "-device",
                "scsi-cd,bus=scsi0.0,drive=cd0,bootindex=0",
            ]);
            1
        } else {
            0
        };
        match self.bus {
            _ if diskless => &mut cmd,
            DiskBus::Virtio => cmd
                .arg("-device")
                .arg(format!("virtio-blk-pci,drive=disk0,bootindex={disk_index}")),
            DiskBus::Nvme => cmd.arg("-device").arg(format!(
                "nvme,serial=crust0,drive=disk0,bootindex={disk_index}"
            )),
        };
        for (i, drive) in self.extra_drives.iter().enumerate() {
            let path = drive.display().to_string().replace(',', ",,");
            cmd.arg("-drive").arg(format!(
                "if=none,id=extra{i},format=raw,readonly=on,file={path}"
            ));
            cmd.arg("-device")
                .arg(format!("virtio-blk-pci,drive=extra{i}"));
        }
        for (i, drive) in self.data_drives.iter().enumerate() {
            let path = drive.path.display().to_string().replace(',', ",,");
            let format = if drive.path.extension().is_some_and(|e| e == "qcow2") {
                "qcow2"
            } else {
                "raw"
            };
            cmd.arg("-drive")
                .arg(format!("if=none,id=data{i},format={format},file={path}"));
            let serial = drive.serial.replace(',', ",,");
            cmd.arg("-device").arg(match drive.bus {
                DiskBus::Virtio => format!("virtio-blk-pci,drive=data{i},serial={serial}"),
                DiskBus::Nvme => format!("nvme,drive=data{i},serial={serial}"),
            });
        }
        for smbios in &self.smbios {
            cmd.arg("-smbios").arg(smbios);
        }
        let netdev = match &self.tap {
            // The user network's services (forwards, TFTP) are not on a tap network.
            Some(tap) => format!("tap,id=net0,ifname={},script=no,downscript=no", tap.ifname),
            None => self.user_netdev(),
        };
        // A network boot needs the NIC in QEMU's boot order: with one given (a disk's
        // bootindex), OVMF connects only the devices it names.
        let nic = if self.tftp.is_some() || self.tap.is_some() {
            "virtio-net-pci,netdev=net0,romfile=,bootindex=9"
        } else {
            "virtio-net-pci,netdev=net0,romfile="
        };
        cmd.args(["-netdev", &netdev, "-device", nic]);
        for (name, value) in &self.fw_cfg {
            cmd.arg("-fw_cfg")
                .arg(format!("name={name},string={value}"));
        }
        if let Some(socket) = &self.tpm {
            cmd.args(crate::tpm::Swtpm::qemu_args(socket));
        }
        cmd.args(["-serial", if interactive { "mon:stdio" } else { "stdio" }]);
        if let Some(qmp) = &self.qmp_socket {
            cmd.arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", qmp.display()));
        }
        if self.no_reboot {
            cmd.arg("-no-reboot");
        }
        cmd
    }

    /// QEMU's user network with its forwards, `guestfwd`s and TFTP server.
    fn user_netdev(&self) -> String {
        let mut netdev = "user,id=net0".to_owned();
        if let Some(net) = &self.user_network {
            netdev.push_str(&format!(",net={net}"));
        }
        for (host, guest) in &self.forwards {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        }
        for rule in &self.guestfwds {
            netdev.push_str(&format!(",guestfwd={rule}"));
        }
        if let Some((dir, file)) = &self.tftp {
            let dir = dir.display().to_string().replace(',', ",,");
            netdev.push_str(&format!(",tftp={dir},bootfile={file}"));
        }
        netdev
    }

    /// Runs the machine attached to this terminal until QEMU exits.
    pub fn run_interactive(&self) -> Result<ExitStatus> {
        self.command(true)
            .status()
            .context("cannot run qemu-system-x86_64 (install qemu-system-x86)")
    }
}

/// A running machine whose console is being read.
#[derive(Debug)]
pub struct Vm {
    child: Child,
    /// QEMU's standard input: the serial console's keyboard, when asked for.
    keyboard: Option<ChildStdin>,
    console: Console,
    qmp_socket: Option<PathBuf>,
    started: Instant,
}

impl Vm {
    /// Starts the machine; its console is logged to `log` and echoed to stderr if `echo`.
    pub fn start(config: &Config, log: Option<&Path>, echo: bool) -> Result<Self> {
        if let Some(sock) = &config.qmp_socket {
            let _ = std::fs::remove_file(sock);
        }
        let mut child = config
            .command(false)
            .stdin(if config.console_input {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot run qemu-system-x86_64 (install qemu-system-x86)")?;
        let stdout = child.stdout.take().context("QEMU has no stdout")?;
        Ok(Self {
            keyboard: child.stdin.take(),
            child,
            console: Console::spawn(stdout, log, echo)?,
            qmp_socket: config.qmp_socket.clone(),
            started: Instant::now(),
        })
    }

    /// Types `text` on the serial console (the machine must have been started with
    /// [`Config::console_input`]); a newline is the Enter key.
    pub fn type_text(&mut self, text: &str) -> Result<()> {
        let keyboard = self
            .keyboard
            .as_mut()
            .context("the machine was started without console input")?;
        keyboard.write_all(text.as_bytes())?;
        keyboard.flush()?;
        Ok(())
    }

    /// The console.
    pub fn console(&mut self) -> &mut Console {
        &mut self.console
    }

    /// Time since QEMU started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits for a line containing `text`.
    pub fn wait_for_text(&mut self, text: &str, timeout: Duration) -> Result<String, WaitError> {
        self.console.wait_for(text, timeout, |l| l.contains(text))
    }

    /// Waits for the init's line of `phase`.
    pub fn wait_for_phase(
        &mut self,
        phase: Phase,
        timeout: Duration,
    ) -> Result<PhaseLine, WaitError> {
        let line = self
            .console
            .wait_for(&format!("crust: {phase}"), timeout, |l| {
                phase::parse_line(l).is_some_and(|p| p.phase == phase)
            })?;
        // The matcher just parsed it.
        Ok(phase::parse_line(&line).unwrap_or(PhaseLine {
            at: Duration::ZERO,
            phase,
            detail: line,
        }))
    }

    /// A QMP session with the machine.
    pub fn qmp(&self) -> Result<Qmp> {
        let sock = self
            .qmp_socket
            .as_ref()
            .context("the machine was started without QMP")?;
        Qmp::connect(sock, Duration::from_secs(10))
    }

    /// Waits for QEMU to exit on its own, reading (and checking) the rest of the console.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.console.drain(Duration::from_secs(5))?;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "QEMU still running after {timeout:?}\n--- console tail ---\n{}",
                    self.console.tail(30)
                );
            }
            // Keep the console flowing (and checked) while waiting.
            match self
                .console
                .wait_for("exit", Duration::from_millis(200), |_| false)
            {
                Err(WaitError::Timeout { .. }) | Err(WaitError::Closed { .. }) => {}
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
        }
    }

    /// Stops QEMU at once (the plug pulled).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}
