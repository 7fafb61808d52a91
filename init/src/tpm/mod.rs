//! A TPM 2.0 command layer of our own, over the kernel's resource manager (`/dev/tpmrm0`).
//!
//! Why not a library: the init is a static musl binary started as PID 1 from the
//! initramfs. `tss-esapi` wraps the C TSS (tpm2-tss's ESAPI, marshalling and TCTI
//! libraries, 1.0 MB as Debian's shared objects, and OpenSSL for sessions), which would have
//! to be built as static musl libraries; Debian's `tpm2-tools` in the root would add 1.7 MB
//! of programs (and the libraries they link) and a process per command, and could not
//! measure in stage 1. What Crust needs is
//! fifteen commands without encrypted sessions (PCRs, a storage key, one sealed object, a
//! policy session, a signature check), which take about 950 lines here with their
//! documentation, and the init grew by 76 KiB with them, the sealed state and the
//! measurements together. The wire format is the same whether the bytes go to
//! `/dev/tpmrm0` or to swtpm's socket, so the tests run this code against Debian's swtpm and
//! check it against Debian's tpm2-tools.
//!
//! The kernel's resource manager gives every open file its own view of transient objects and
//! sessions and flushes them when the file is closed; [`Tpm`] still flushes what it made.

pub mod measure;
pub mod policy;
pub mod rc;
pub mod wire;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use crust_format::pcr::{ALG_SHA256, selection};
use zeroize::Zeroizing;

use rc::ResponseCode;
use wire::{Auth, Command, Reader, Response, Writer};

/// The resource-managed TPM device.
pub const DEVICE: &str = "/dev/tpmrm0";

/// `TPM_RH_OWNER`.
const RH_OWNER: u32 = 0x4000_0001;
/// `TPM_RH_NULL`.
const RH_NULL: u32 = 0x4000_0007;
/// `TPM_ALG_NULL`.
const ALG_NULL: u16 = 0x0010;
/// `TPM_ALG_RSASSA`.
const ALG_RSASSA: u16 = 0x0014;
/// `TPM_ALG_KEYEDHASH`.
const ALG_KEYEDHASH: u16 = 0x0008;
/// `TPM_ALG_ECC`.
const ALG_ECC: u16 = 0x0023;
/// `TPM_ALG_AES`.
const ALG_AES: u16 = 0x0006;
/// `TPM_ALG_CFB`.
const ALG_CFB: u16 = 0x0043;
/// `TPM_ECC_NIST_P256`.
const ECC_NIST_P256: u16 = 0x0003;
/// `TPM_SE_POLICY`.
const SE_POLICY: u8 = 0x01;
/// `TPM_SE_TRIAL`.
const SE_TRIAL: u8 = 0x03;
/// `TPM_CAP_PCRS`.
const CAP_PCRS: u32 = 5;

/// `objectAttributes` of the storage root key: `fixedTPM | fixedParent |
/// sensitiveDataOrigin | userWithAuth | noDA | restricted | decrypt`, the TCG provisioning
/// guidance's SRK.
const SRK_ATTRIBUTES: u32 = 0x0003_0472;
/// `objectAttributes` of the sealed key: `fixedTPM | fixedParent | noDA`. No `userWithAuth`:
/// only a policy session can unseal it.
const SEALED_ATTRIBUTES: u32 = 0x0000_0412;

/// Command codes.
mod cc {
    pub const CREATE_PRIMARY: u32 = 0x131;
    pub const CREATE: u32 = 0x153;
    pub const LOAD: u32 = 0x157;
    pub const UNSEAL: u32 = 0x15e;
    pub const FLUSH_CONTEXT: u32 = 0x165;
    pub const LOAD_EXTERNAL: u32 = 0x167;
    pub const POLICY_AUTHORIZE: u32 = 0x16a;
    pub const START_AUTH_SESSION: u32 = 0x176;
    pub const VERIFY_SIGNATURE: u32 = 0x177;
    pub const GET_CAPABILITY: u32 = 0x17a;
    pub const GET_RANDOM: u32 = 0x17b;
    pub const PCR_READ: u32 = 0x17e;
    pub const POLICY_PCR: u32 = 0x17f;
    pub const PCR_EXTEND: u32 = 0x182;
    #[cfg(test)]
    pub const POLICY_GET_DIGEST: u32 = 0x189;
}

/// What went wrong talking to the TPM. Callers branch on the response code (a policy that
/// does not hold, a blob another TPM sealed).
#[derive(Debug)]
pub enum TpmError {
    /// The device (or socket) failed.
    Io(io::Error),
    /// The TPM refused the command.
    Response {
        /// The command.
        command: &'static str,
        /// Its response code.
        code: ResponseCode,
    },
    /// The answer does not parse.
    Malformed {
        /// The command.
        command: &'static str,
        /// What is wrong.
        why: &'static str,
    },
}

impl fmt::Display for TpmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TpmError::Io(e) => write!(f, "{DEVICE}: {e}"),
            TpmError::Response { command, code } => write!(f, "TPM2_{command}: {code}"),
            TpmError::Malformed { command, why } => write!(f, "TPM2_{command}: {why}"),
        }
    }
}

impl std::error::Error for TpmError {}

impl TpmError {
    /// The response code, if the TPM answered with one.
    pub fn code(&self) -> Option<ResponseCode> {
        match self {
            TpmError::Response { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Result of a TPM command.
pub type Result<T> = std::result::Result<T, TpmError>;

/// Where commands go: a command's bytes in, the response's bytes out.
pub trait Transport {
    /// Sends one command and returns its whole response.
    fn transact(&mut self, command: &[u8]) -> io::Result<Vec<u8>>;
}

/// `/dev/tpmrm0` (or `/dev/tpm0`): one `write` of the command, one `read` of the response.
#[derive(Debug)]
pub struct Device(File);

impl Transport for Device {
    fn transact(&mut self, command: &[u8]) -> io::Result<Vec<u8>> {
        self.0.write_all(command)?;
        let mut buf = vec![0u8; wire::MAX_RESPONSE];
        let n = self.0.read(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
}

/// The first handle of a response (the parser returns as many as the command has).
fn first(handles: &[u32]) -> Result<Handle> {
    handles
        .first()
        .map(|h| Handle(*h))
        .ok_or(TpmError::Malformed {
            command: "response",
            why: "no handle",
        })
}

/// A transient object or session the TPM holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle(pub u32);

/// A loaded object's handle and TPM name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Its handle.
    pub handle: Handle,
    /// Its name (name algorithm, then the digest of its public area).
    pub name: Vec<u8>,
}

/// `TPMT_TK_VERIFIED`: the TPM's word that a key signed a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    tag: u16,
    hierarchy: u32,
    digest: Vec<u8>,
}

/// A key sealed by [`Tpm::seal`]: its `TPM2B_PUBLIC` and `TPM2B_PRIVATE`, length included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// `TPM2B_PUBLIC`.
    pub public: Vec<u8>,
    /// `TPM2B_PRIVATE`.
    pub private: Vec<u8>,
}

/// A TPM 2.0 reached through a [`Transport`].
pub struct Tpm {
    io: Box<dyn Transport + Send>,
}

impl fmt::Debug for Tpm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tpm")
    }
}

impl Tpm {
    /// Opens [`DEVICE`]; `Ok(None)` when the machine has no TPM 2.0 (no device node and
    /// nothing in sysfs).
    pub fn open() -> Result<Option<Self>> {
        Self::open_at(Path::new(DEVICE))
    }

    fn open_at(path: &Path) -> Result<Option<Self>> {
        if !path.exists() && !Path::new("/sys/class/tpmrm/tpmrm0").exists() {
            return Ok(None);
        }
        if !path.exists() {
            // devtmpfs names it; create it from sysfs if it has not yet.
            let dev = crate::devnode::DevNum::from_sysfs(Path::new("/sys/class/tpmrm/tpmrm0"))
                .map_err(TpmError::Io)?;
            crate::devnode::ensure(
                path,
                crate::devnode::Kind::Char,
                dev,
                Duration::from_millis(200),
            )
            .map_err(TpmError::Io)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(TpmError::Io)?;
        Ok(Some(Self::over(Device(file))))
    }

    /// A TPM behind another transport (swtpm's socket, in tests).
    pub fn over(io: impl Transport + Send + 'static) -> Self {
        Self { io: Box::new(io) }
    }

    /// Sends `cmd` and returns the raw response, retrying the TPM's "try again" warnings.
    fn send(&mut self, cmd: &Command) -> Result<Vec<u8>> {
        let bytes = Zeroizing::new(cmd.to_bytes());
        let mut attempts = 0;
        loop {
            let response = self.io.transact(&bytes).map_err(TpmError::Io)?;
            let code = response
                .get(6..wire::HEADER)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
            attempts += 1;
            match code {
                Some(code) if ResponseCode(code).is_retry() && attempts < 50 => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => return Ok(response),
            }
        }
    }

    /// Runs a command whose response holds no secret.
    fn run<T>(
        &mut self,
        cmd: Command,
        handles: usize,
        read: impl FnOnce(&[u32], &mut Reader<'_>) -> Result<T>,
    ) -> Result<T> {
        let bytes = self.send(&cmd)?;
        let mut response = Response::parse(&bytes, &cmd, handles)?;
        read(&response.handles, &mut response.params)
    }

    /// The PCR banks that are allocated (have at least one PCR selected).
    pub fn pcr_banks(&mut self) -> Result<Vec<u16>> {
        let mut p = Writer::new();
        p.u32(CAP_PCRS).u32(0).u32(1);
        let cmd = Command::new("GetCapability", cc::GET_CAPABILITY).params(p);
        self.run(cmd, 0, |_, r| {
            let _more = r.u8()?;
            if r.u32()? != CAP_PCRS {
                return Err(TpmError::Malformed {
                    command: "GetCapability",
                    why: "another capability than asked for",
                });
            }
            let count = r.u32()?;
            let mut banks = Vec::new();
            for _ in 0..count {
                let alg = r.u16()?;
                let n = r.u8()?;
                let bitmap = r.bytes(usize::from(n))?;
                if bitmap.iter().any(|b| *b != 0) {
                    banks.push(alg);
                }
            }
            Ok(banks)
        })
    }

    /// PCR `pcr` of the SHA-256 bank; `None` when that bank is not allocated.
    pub fn pcr_read(&mut self, pcr: u32) -> Result<Option<[u8; 32]>> {
        let mut p = Writer::new();
        p.raw(&selection(ALG_SHA256, &[pcr]));
        let cmd = Command::new("PCR_Read", cc::PCR_READ).params(p);
        self.run(cmd, 0, |_, r| {
            let _counter = r.u32()?;
            let selections = r.u32()?;
            for _ in 0..selections {
                r.u16()?;
                let n = r.u8()?;
                r.bytes(usize::from(n))?;
            }
            match r.u32()? {
                0 => Ok(None),
                _ => {
                    let value = r.tpm2b()?;
                    <[u8; 32]>::try_from(value)
                        .map(Some)
                        .map_err(|_| TpmError::Malformed {
                            command: "PCR_Read",
                            why: "a SHA-256 PCR that is not 32 bytes",
                        })
                }
            }
        })
    }

    /// Extends PCR `pcr` with one digest per bank (algorithm, digest).
    pub fn pcr_extend(&mut self, pcr: u32, digests: &[(u16, Vec<u8>)]) -> Result<()> {
        let mut p = Writer::new();
        p.u32(digests.len() as u32);
        for (alg, digest) in digests {
            p.u16(*alg).raw(digest);
        }
        let cmd = Command::new("PCR_Extend", cc::PCR_EXTEND)
            .handle(pcr)
            .auth(Auth::EmptyPassword)
            .params(p);
        self.run(cmd, 0, |_, _| Ok(()))
    }

    /// `n` bytes from the TPM's random number generator.
    pub fn random(&mut self, n: usize) -> Result<Zeroizing<Vec<u8>>> {
        let mut out = Zeroizing::new(Vec::with_capacity(n));
        while out.len() < n {
            let want = (n - out.len()).min(32) as u16;
            let mut p = Writer::new();
            p.u16(want);
            let cmd = Command::new("GetRandom", cc::GET_RANDOM).params(p);
            let bytes = Zeroizing::new(self.send(&cmd)?);
            let mut response = Response::parse(&bytes, &cmd, 0)?;
            let got = response.params.tpm2b()?;
            if got.is_empty() {
                return Err(TpmError::Malformed {
                    command: "GetRandom",
                    why: "no bytes",
                });
            }
            let take = got.len().min(n - out.len());
            out.extend_from_slice(&got[..take]);
        }
        Ok(out)
    }

    /// The storage root key: an ECC P-256 primary key of the owner hierarchy with the
    /// TCG's SRK template. Primary keys derive from the hierarchy's seed and the template,
    /// so every boot gets the same key until the TPM is cleared.
    pub fn storage_key(&mut self) -> Result<Loaded> {
        let mut public = Writer::new();
        public
            .u16(ALG_ECC)
            .u16(ALG_SHA256)
            .u32(SRK_ATTRIBUTES)
            .tpm2b(&[])
            .u16(ALG_AES)
            .u16(128)
            .u16(ALG_CFB)
            .u16(ALG_NULL)
            .u16(ECC_NIST_P256)
            .u16(ALG_NULL)
            .tpm2b(&[])
            .tpm2b(&[]);
        let mut p = Writer::new();
        p.tpm2b(&[0, 0, 0, 0]) // inSensitive: no userAuth, no data
            .tpm2b(&public.0)
            .tpm2b(&[]) // outsideInfo
            .u32(0); // creationPCR: none
        let cmd = Command::new("CreatePrimary", cc::CREATE_PRIMARY)
            .handle(RH_OWNER)
            .auth(Auth::EmptyPassword)
            .params(p);
        self.run(cmd, 1, |handles, r| {
            r.tpm2b()?; // outPublic
            r.tpm2b()?; // creationData
            r.tpm2b()?; // creationHash
            r.u16()?; // creationTicket
            r.u32()?;
            r.tpm2b()?;
            let name = r.tpm2b()?.to_vec();
            Ok(Loaded {
                handle: first(handles)?,
                name,
            })
        })
    }

    /// Seals `secret` under `parent` with `policy` as the object's `authPolicy`.
    pub fn seal(&mut self, parent: Handle, secret: &[u8], policy: &[u8; 32]) -> Result<Blob> {
        let mut public = Writer::new();
        public
            .u16(ALG_KEYEDHASH)
            .u16(ALG_SHA256)
            .u32(SEALED_ATTRIBUTES)
            .tpm2b(policy)
            .u16(ALG_NULL) // keyed-hash scheme: none (a sealed data object)
            .tpm2b(&[]);
        // Sized up front, so no reallocation leaves a copy of the secret behind; the
        // command wipes its parameters when it is dropped.
        let mut sensitive = Writer::with_capacity(8 + secret.len());
        sensitive.tpm2b(&[]).tpm2b(secret);
        let mut p = Writer::with_capacity(64 + secret.len() + public.0.len());
        p.tpm2b(&sensitive.0).tpm2b(&public.0).tpm2b(&[]).u32(0);
        zeroize::Zeroize::zeroize(&mut sensitive.0);
        let cmd = Command::new("Create", cc::CREATE)
            .handle(parent.0)
            .auth(Auth::EmptyPassword)
            .params(p);
        self.run(cmd, 0, |_, r| {
            let private = r.tpm2b_whole()?.to_vec();
            let public = r.tpm2b_whole()?.to_vec();
            Ok(Blob { public, private })
        })
    }

    /// Loads a sealed blob under `parent`.
    pub fn load(&mut self, parent: Handle, blob: &Blob) -> Result<Loaded> {
        let mut p = Writer::new();
        p.raw(&blob.private).raw(&blob.public);
        let cmd = Command::new("Load", cc::LOAD)
            .handle(parent.0)
            .auth(Auth::EmptyPassword)
            .params(p);
        self.run(cmd, 1, |handles, r| {
            Ok(Loaded {
                handle: first(handles)?,
                name: r.tpm2b()?.to_vec(),
            })
        })
    }

    /// Loads a public key (a marshalled `TPMT_PUBLIC`) into the owner hierarchy, whose
    /// signature tickets PolicyAuthorize accepts (the null hierarchy's it does not).
    pub fn load_public(&mut self, tpm_public: &[u8]) -> Result<Loaded> {
        let mut p = Writer::new();
        p.tpm2b(&[]).tpm2b(tpm_public).u32(RH_OWNER);
        let cmd = Command::new("LoadExternal", cc::LOAD_EXTERNAL).params(p);
        self.run(cmd, 1, |handles, r| {
            Ok(Loaded {
                handle: first(handles)?,
                name: r.tpm2b()?.to_vec(),
            })
        })
    }

    /// Checks an RSASSA-PKCS1-v1_5 (SHA-256) signature of `digest` by `key`.
    pub fn verify_signature(
        &mut self,
        key: Handle,
        digest: &[u8; 32],
        signature: &[u8],
    ) -> Result<Ticket> {
        let mut p = Writer::new();
        p.tpm2b(digest)
            .u16(ALG_RSASSA)
            .u16(ALG_SHA256)
            .tpm2b(signature);
        let cmd = Command::new("VerifySignature", cc::VERIFY_SIGNATURE)
            .handle(key.0)
            .params(p);
        self.run(cmd, 0, |_, r| {
            Ok(Ticket {
                tag: r.u16()?,
                hierarchy: r.u32()?,
                digest: r.tpm2b()?.to_vec(),
            })
        })
    }

    /// Starts an unbound, unsalted policy session (or a trial session, which only computes
    /// a digest).
    pub fn policy_session(&mut self, trial: bool) -> Result<Handle> {
        let mut nonce = [0u8; 32];
        crate::random::fill(&mut nonce).map_err(TpmError::Io)?;
        let mut p = Writer::new();
        p.tpm2b(&nonce)
            .tpm2b(&[])
            .u8(if trial { SE_TRIAL } else { SE_POLICY })
            .u16(ALG_NULL)
            .u16(ALG_SHA256);
        let cmd = Command::new("StartAuthSession", cc::START_AUTH_SESSION)
            .handle(RH_NULL)
            .handle(RH_NULL)
            .params(p);
        self.run(cmd, 1, |handles, _| first(handles))
    }

    /// PolicyPCR over SHA-256 PCRs `pcrs` with their current values.
    pub fn policy_pcr(&mut self, session: Handle, pcrs: &[u32]) -> Result<()> {
        let mut p = Writer::new();
        p.tpm2b(&[]).raw(&selection(ALG_SHA256, pcrs));
        let cmd = Command::new("PolicyPCR", cc::POLICY_PCR)
            .handle(session.0)
            .params(p);
        self.run(cmd, 0, |_, _| Ok(()))
    }

    /// PolicyAuthorize: the session's digest is `approved`, which the key named `key_name`
    /// signed (`ticket`); the digest becomes the key's authorization.
    pub fn policy_authorize(
        &mut self,
        session: Handle,
        approved: &[u8; 32],
        key_name: &[u8],
        ticket: &Ticket,
    ) -> Result<()> {
        let mut p = Writer::new();
        p.tpm2b(approved)
            .tpm2b(&[])
            .tpm2b(key_name)
            .u16(ticket.tag)
            .u32(ticket.hierarchy)
            .tpm2b(&ticket.digest);
        let cmd = Command::new("PolicyAuthorize", cc::POLICY_AUTHORIZE)
            .handle(session.0)
            .params(p);
        self.run(cmd, 0, |_, _| Ok(()))
    }

    /// The session's policy digest so far (the tests compare it with ours).
    #[cfg(test)]
    pub fn policy_digest(&mut self, session: Handle) -> Result<Vec<u8>> {
        let cmd = Command::new("PolicyGetDigest", cc::POLICY_GET_DIGEST).handle(session.0);
        self.run(cmd, 0, |_, r| Ok(r.tpm2b()?.to_vec()))
    }

    /// Unseals `item` with the policy `session` (which the command ends).
    pub fn unseal(&mut self, item: Handle, session: Handle) -> Result<Zeroizing<Vec<u8>>> {
        let cmd = Command::new("Unseal", cc::UNSEAL)
            .handle(item.0)
            .auth(Auth::Policy(session.0));
        let bytes = Zeroizing::new(self.send(&cmd)?);
        let mut response = Response::parse(&bytes, &cmd, 0)?;
        Ok(Zeroizing::new(response.params.tpm2b()?.to_vec()))
    }

    /// Flushes a transient object or session; errors are ignored (the resource manager
    /// flushes what is left when the device is closed).
    pub fn flush(&mut self, handle: Handle) {
        let mut p = Writer::new();
        p.u32(handle.0);
        let cmd = Command::new("FlushContext", cc::FLUSH_CONTEXT).params(p);
        let _ = self.run(cmd, 0, |_, _| Ok(()));
    }
}

#[cfg(test)]
mod tests;
