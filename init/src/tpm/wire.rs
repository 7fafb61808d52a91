//! The TPM 2.0 wire format (TPM 2.0 Library, part 1 §18 and part 3): big-endian integers,
//! `TPM2B` byte strings with a 16-bit length, a 10-byte command and response header, an
//! authorization area in commands that need one.
//!
//! A [`Command`] is built from its code, its handles, its authorizations and its marshalled
//! parameters; [`Response::parse`] splits an answer into handles and a parameter [`Reader`]
//! after checking the header and the response code.

use super::TpmError;
use super::rc::ResponseCode;

/// `TPM_ST_NO_SESSIONS`.
pub const ST_NO_SESSIONS: u16 = 0x8001;
/// `TPM_ST_SESSIONS`.
pub const ST_SESSIONS: u16 = 0x8002;
/// `TPM_RS_PW`: the password "session" (an empty password: PCRs 0-15, the owner
/// hierarchy's storage key).
pub const RS_PW: u32 = 0x4000_0009;
/// Bytes of the command and response header.
pub const HEADER: usize = 10;
/// The largest response any command here gets (TPM 2.0 devices answer at most 4 KiB).
pub const MAX_RESPONSE: usize = 4096;

/// Marshals parameters.
#[derive(Debug, Default, Clone)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty buffer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    /// A big-endian `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Bytes as they are (an already marshalled structure).
    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }

    /// A `TPM2B`: 16-bit length, then the bytes. Longer input is a bug of this module
    /// (every `TPM2B` here is far below 64 KiB); it is cut, and the TPM refuses the command.
    pub fn tpm2b(&mut self, v: &[u8]) -> &mut Self {
        let len = u16::try_from(v.len()).unwrap_or(u16::MAX);
        self.u16(len);
        self.0.extend_from_slice(&v[..usize::from(len)]);
        self
    }
}

/// Reads marshalled values; every read checks the length left.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    command: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over the parameters of `command`'s response.
    pub fn new(buf: &'a [u8], command: &'static str) -> Self {
        Self { buf, command }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], TpmError> {
        if self.buf.len() < n {
            return Err(TpmError::Malformed {
                command: self.command,
                why: "the response is shorter than its structures",
            });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, TpmError> {
        Ok(self.take(1)?[0])
    }

    /// A big-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, TpmError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, TpmError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], TpmError> {
        self.take(n)
    }

    /// A `TPM2B`'s content.
    pub fn tpm2b(&mut self) -> Result<&'a [u8], TpmError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    /// A whole `TPM2B`, length included (to store and send back as it came).
    pub fn tpm2b_whole(&mut self) -> Result<&'a [u8], TpmError> {
        let start = self.buf;
        let n = self.u16()?;
        self.take(usize::from(n))?;
        Ok(&start[..2 + usize::from(n)])
    }
}

/// One authorization of a command: a session handle and what goes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// The empty password ([`RS_PW`]).
    EmptyPassword,
    /// A policy session whose digest already satisfies the object's policy (no HMAC: the
    /// object has no `authValue` in its policy), ended by the command.
    Policy(u32),
}

/// A command ready to marshal.
#[derive(Debug, Clone)]
pub struct Command {
    /// The command's name, for messages.
    pub name: &'static str,
    code: u32,
    handles: Vec<u32>,
    auths: Vec<Auth>,
    params: Vec<u8>,
}

impl Command {
    /// A command with its code (`TPM_CC_*`) and name.
    pub fn new(name: &'static str, code: u32) -> Self {
        Self {
            name,
            code,
            handles: Vec::new(),
            auths: Vec::new(),
            params: Vec::new(),
        }
    }

    /// Adds a handle to the handle area.
    pub fn handle(mut self, h: u32) -> Self {
        self.handles.push(h);
        self
    }

    /// Adds an authorization (for the handle that needs it, in handle order).
    pub fn auth(mut self, a: Auth) -> Self {
        self.auths.push(a);
        self
    }

    /// Sets the marshalled parameters.
    pub fn params(mut self, w: Writer) -> Self {
        self.params = w.0;
        self
    }

    /// The command's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut area = Writer::new();
        for a in &self.auths {
            match a {
                Auth::EmptyPassword => {
                    area.u32(RS_PW).tpm2b(&[]).u8(0).tpm2b(&[]);
                }
                Auth::Policy(session) => {
                    area.u32(*session).tpm2b(&[]).u8(0).tpm2b(&[]);
                }
            }
        }
        let mut out = Writer::with_capacity(
            HEADER + 4 * self.handles.len() + 4 + area.0.len() + self.params.len(),
        );
        out.u16(if self.auths.is_empty() {
            ST_NO_SESSIONS
        } else {
            ST_SESSIONS
        });
        out.u32(0); // size, filled in below
        out.u32(self.code);
        for h in &self.handles {
            out.u32(*h);
        }
        if !self.auths.is_empty() {
            out.u32(area.0.len() as u32);
            out.raw(&area.0);
        }
        out.raw(&self.params);
        let size = out.0.len() as u32;
        out.0[2..6].copy_from_slice(&size.to_be_bytes());
        out.0
    }

    /// Whether the response carries a session area (and so a parameter size).
    pub fn has_sessions(&self) -> bool {
        !self.auths.is_empty()
    }
}

impl Drop for Command {
    /// Parameters may hold a secret (the key `TPM2_Create` seals): wiped.
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.params);
    }
}

/// A successful response: handles and parameters.
#[derive(Debug, Clone)]
pub struct Response<'a> {
    /// The handles the command returned.
    pub handles: Vec<u32>,
    /// The parameters.
    pub params: Reader<'a>,
}

impl<'a> Response<'a> {
    /// Checks the header and the response code of `bytes`, the answer to `command`, which
    /// returns `handles` handles.
    pub fn parse(bytes: &'a [u8], command: &Command, handles: usize) -> Result<Self, TpmError> {
        let malformed = |why| TpmError::Malformed {
            command: command.name,
            why,
        };
        if bytes.len() < HEADER {
            return Err(malformed("the response is shorter than its header"));
        }
        let tag = u16::from_be_bytes([bytes[0], bytes[1]]);
        let size = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]) as usize;
        let code = u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]);
        if size != bytes.len() {
            return Err(malformed("the response's size field is not its length"));
        }
        if code != 0 {
            return Err(TpmError::Response {
                command: command.name,
                code: ResponseCode(code),
            });
        }
        let expected = if command.has_sessions() {
            ST_SESSIONS
        } else {
            ST_NO_SESSIONS
        };
        if tag != expected {
            return Err(malformed("the response's tag does not fit the command"));
        }
        let mut r = Reader::new(&bytes[HEADER..], command.name);
        let mut hs = Vec::with_capacity(handles);
        for _ in 0..handles {
            hs.push(r.u32()?);
        }
        let params = if command.has_sessions() {
            let n = r.u32()? as usize;
            r.bytes(n)?
        } else {
            r.bytes(r.buf.len())?
        };
        Ok(Self {
            handles: hs,
            params: Reader::new(params, command.name),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_marshal_header_handles_auth_and_parameters() {
        let mut p = Writer::new();
        p.u16(0x000b);
        let cmd = Command::new("PCR_Extend", 0x182)
            .handle(12)
            .auth(Auth::EmptyPassword)
            .params(p);
        assert_eq!(
            cmd.to_bytes(),
            [
                0x80, 0x02, 0, 0, 0, 0x1d, 0, 0, 0x01, 0x82, // header
                0, 0, 0, 12, // PCR 12
                0, 0, 0, 9, 0x40, 0, 0, 9, 0, 0, 0, 0, 0, // password session
                0, 0x0b,
            ]
        );
        let plain = Command::new("GetRandom", 0x17b).to_bytes();
        assert_eq!(plain, [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0x7b]);
    }

    #[test]
    fn responses_are_checked_before_they_are_read() {
        let cmd = Command::new("Load", 0x157)
            .handle(0x8000_0000)
            .auth(Auth::EmptyPassword);
        // Handle, parameter size, a TPM2B_NAME of 2 bytes, then a session response.
        let ok = [
            0x80, 0x02, 0, 0, 0, 25, 0, 0, 0, 0, 0x80, 0, 0, 1, 0, 0, 0, 4, 0, 2, 0xab, 0xcd, 0, 0,
            1,
        ];
        let r = Response::parse(&ok, &cmd, 1).unwrap();
        assert_eq!(r.handles, [0x8000_0001]);
        assert_eq!(r.params.clone().tpm2b().unwrap(), [0xab, 0xcd]);
        let failed = [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x09, 0x9d];
        match Response::parse(&failed, &cmd, 1) {
            Err(TpmError::Response { code, .. }) => assert!(code.is_policy_failure()),
            other => panic!("{other:?}"),
        }
        let mut short = ok;
        short[5] = 30;
        assert!(matches!(
            Response::parse(&short, &cmd, 1),
            Err(TpmError::Malformed { .. })
        ));
        let mut r = Reader::new(&[0, 5, 1], "x");
        assert!(r.tpm2b().is_err());
    }
}
