//! TPM 2.0 response codes (TPM 2.0 Library, part 2 §6.6): names for the ones a person
//! might meet here, and the few the callers branch on.

use std::fmt;

/// A non-zero `TPM_RC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseCode(pub u32);

/// Format-one codes (bit 7 set): the error in the low six bits, plus which handle,
/// session or parameter it concerns.
const FORMAT_ONE: u32 = 0x080;

impl ResponseCode {
    /// The error without the handle, session or parameter number of format-one codes.
    pub fn base(self) -> u32 {
        if self.0 & FORMAT_ONE != 0 {
            FORMAT_ONE | (self.0 & 0x3f)
        } else {
            self.0
        }
    }

    /// `TPM_RC_POLICY_FAIL`: the session's policy digest is not the object's `authPolicy`
    /// (for the sealed key: PCR 7 differs from when it was sealed).
    pub fn is_policy_failure(self) -> bool {
        self.base() == 0x09d
    }

    /// `TPM_RC_INTEGRITY` (or `TPM_RC_SIZE`, `TPM_RC_KEY`): a sealed blob this TPM's key did
    /// not make (the TPM was cleared, or the disk is in another machine).
    pub fn is_foreign_blob(self) -> bool {
        matches!(self.base(), 0x09f | 0x095 | 0x09c)
    }

    /// Warnings after which the same command may simply be sent again (`TPM_RC_RETRY`,
    /// `TPM_RC_YIELDED`, `TPM_RC_TESTING`).
    pub fn is_retry(self) -> bool {
        matches!(self.0, 0x922 | 0x908 | 0x90a)
    }

    fn name(self) -> Option<&'static str> {
        Some(match self.base() {
            0x081 => "TPM_RC_ASYMMETRIC",
            0x082 => "TPM_RC_ATTRIBUTES",
            0x083 => "TPM_RC_HASH",
            0x084 => "TPM_RC_VALUE",
            0x085 => "TPM_RC_HIERARCHY",
            0x087 => "TPM_RC_KEY_SIZE",
            0x08a => "TPM_RC_TYPE",
            0x08b => "TPM_RC_HANDLE",
            0x08d => "TPM_RC_RANGE",
            0x08e => "TPM_RC_AUTH_FAIL",
            0x08f => "TPM_RC_NONCE",
            0x092 => "TPM_RC_SCHEME",
            0x095 => "TPM_RC_SIZE",
            0x096 => "TPM_RC_SYMMETRIC",
            0x097 => "TPM_RC_TAG",
            0x098 => "TPM_RC_SELECTOR",
            0x09a => "TPM_RC_INSUFFICIENT",
            0x09b => "TPM_RC_SIGNATURE",
            0x09c => "TPM_RC_KEY",
            0x09d => "TPM_RC_POLICY_FAIL",
            0x09f => "TPM_RC_INTEGRITY",
            0x0a0 => "TPM_RC_TICKET",
            0x0a2 => "TPM_RC_BAD_AUTH",
            0x0a3 => "TPM_RC_EXPIRED",
            0x0a4 => "TPM_RC_POLICY_CC",
            0x0a6 => "TPM_RC_CURVE",
            0x101 => "TPM_RC_FAILURE",
            0x120 => "TPM_RC_DISABLED",
            0x124 => "TPM_RC_AUTH_TYPE",
            0x125 => "TPM_RC_AUTH_MISSING",
            0x126 => "TPM_RC_POLICY",
            0x127 => "TPM_RC_PCR",
            0x128 => "TPM_RC_PCR_CHANGED",
            0x12e => "TPM_RC_TOO_MANY_CONTEXTS",
            0x130 => "TPM_RC_REBOOT",
            0x143 => "TPM_RC_COMMAND_CODE",
            0x152 => "TPM_RC_PARENT",
            0x153 => "TPM_RC_NEEDS_TEST",
            0x155 => "TPM_RC_SENSITIVE",
            0x902 => "TPM_RC_OBJECT_MEMORY",
            0x903 => "TPM_RC_SESSION_MEMORY",
            0x905 => "TPM_RC_SESSION_HANDLES",
            0x906 => "TPM_RC_OBJECT_HANDLES",
            0x908 => "TPM_RC_YIELDED",
            0x90a => "TPM_RC_TESTING",
            0x921 => "TPM_RC_LOCKOUT",
            0x922 => "TPM_RC_RETRY",
            _ => return None,
        })
    }
}

impl fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}")?,
            None => write!(f, "TPM_RC 0x{:03x}", self.base())?,
        }
        let rc = self.0;
        if rc & FORMAT_ONE != 0 {
            let n = (rc >> 8) & 0xf;
            if rc & 0x40 != 0 {
                write!(f, " (parameter {n})")?;
            } else if rc & 0x800 != 0 {
                write!(f, " (session {})", n & 0x7)?;
            } else if n != 0 {
                write!(f, " (handle {n})")?;
            }
        }
        write!(f, " [0x{rc:x}]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_one_codes_name_their_error_and_place() {
        // TPM_RC_POLICY_FAIL for session 1, as Unseal reports a PCR 7 mismatch.
        let rc = ResponseCode(0x99d);
        assert!(rc.is_policy_failure());
        assert_eq!(rc.to_string(), "TPM_RC_POLICY_FAIL (session 1) [0x99d]");
        // TPM_RC_INTEGRITY for parameter 1 (Load of a blob another TPM sealed).
        let rc = ResponseCode(0x1df);
        assert!(rc.is_foreign_blob());
        assert_eq!(rc.to_string(), "TPM_RC_INTEGRITY (parameter 1) [0x1df]");
        assert_eq!(
            ResponseCode(0x922).to_string(),
            "TPM_RC_RETRY [0x922]",
            "warnings are format zero"
        );
        assert!(ResponseCode(0x922).is_retry());
        assert_eq!(ResponseCode(0x7777).to_string(), "TPM_RC 0x7777 [0x7777]");
    }
}
