//! The init's one error type: a failed boot check.
//!
//! PID 1 cannot recover from a failed check, so nothing branches on the kind of failure:
//! an error names the check, says what was found and what an operator should do, and the
//! caller prints it on one console line and reboots (so boot counting can fall back to the
//! other slot).

use std::fmt;

/// A failed boot check.
#[derive(Debug)]
pub struct Error {
    /// Short, stable name of the check, such as `manifest-signature` (tests grep for it).
    pub check: &'static str,
    /// What went wrong, with the facts found.
    pub message: String,
    /// What to do about it; empty when there is nothing better to say than "reboot".
    pub advice: &'static str,
}

/// Result of a boot step.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A failed `check` with a message.
    pub fn new(check: &'static str, message: impl Into<String>) -> Self {
        Self {
            check,
            message: message.into(),
            advice: "",
        }
    }

    /// Adds what an operator should do.
    pub fn advice(mut self, advice: &'static str) -> Self {
        self.advice = advice;
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.check, self.message)?;
        if !self.advice.is_empty() {
            write!(f, "; {}", self.advice)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// Turns any displayable error into a failed check.
pub trait Context<T> {
    /// Fails `check` with "`what`: `cause`".
    fn context(self, check: &'static str, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, check: &'static str, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|cause| Error::new(check, format!("{}: {cause}", what())))
    }
}

/// Attaches advice to the error of a result.
pub trait Advise {
    /// Sets the advice of the error, if any.
    fn advise(self, advice: &'static str) -> Self;
}

impl<T> Advise for Result<T> {
    fn advise(self, advice: &'static str) -> Self {
        self.map_err(|e| e.advice(advice))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_check_then_the_advice() {
        let e = Error::new("disk", "no boot disk").advice("check the cable");
        assert_eq!(e.to_string(), "disk: no boot disk; check the cable");
        let r: std::result::Result<(), &str> = Err("EIO");
        let e = r
            .context("modules", || "cannot load x.ko".into())
            .advise("rebuild the image")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "modules: cannot load x.ko: EIO; rebuild the image"
        );
    }
}
