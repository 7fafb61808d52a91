//! Measured boot: the init extends what it verified and read into a PCR before acting on
//! it, so that the TPM's PCRs (and a quote of them) tell what this boot trusted.
//!
//! An event is a line of text (`root-hash=<hex>`, `user-data-source=<where>`,
//! `user-data=<sha256 of the bytes>`); the PCR is extended in every allocated bank with the
//! bank's digest of that text, so anyone holding the event log can replay it. The log is
//! `/run/crust/measurements` (`<pcr> <sha256 hex> <event>` per line) and the console (one
//! `measure:` line per event). The firmware's own log (`binary_bios_measurements`) ends
//! where the kernel starts; this one continues it for the init's events.
//!
//! Without a TPM nothing is measured and nothing is said per event; a TPM that refuses an
//! extension is a warning (the PCR then tells a verifier that the event is missing).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use crust_format::initrd;
use crust_format::pcr::{ALG_SHA1, ALG_SHA256, ALG_SHA384, ALG_SHA512};
use ring::digest;

use super::{Result, Tpm};
use crate::console;

/// The digests of `event` for the banks the TPM has allocated that this code can compute.
pub fn digests(banks: &[u16], event: &str) -> Vec<(u16, Vec<u8>)> {
    [
        (ALG_SHA1, &digest::SHA1_FOR_LEGACY_USE_ONLY),
        (ALG_SHA256, &digest::SHA256),
        (ALG_SHA384, &digest::SHA384),
        (ALG_SHA512, &digest::SHA512),
    ]
    .into_iter()
    .filter(|(alg, _)| banks.contains(alg))
    .map(|(alg, algorithm)| {
        (
            alg,
            digest::digest(algorithm, event.as_bytes())
                .as_ref()
                .to_vec(),
        )
    })
    .collect()
}

/// Extends `pcr` with `event` through `tpm`, logs it, and prints it.
pub fn extend(tpm: &mut Tpm, pcr: u32, event: &str) -> Result<()> {
    extend_logged(tpm, pcr, event, Path::new(initrd::RUN_MEASUREMENTS))
}

/// [`extend`], logging to `log_file`.
pub fn extend_logged(tpm: &mut Tpm, pcr: u32, event: &str, log_file: &Path) -> Result<()> {
    let banks = tpm.pcr_banks()?;
    let digests = digests(&banks, event);
    tpm.pcr_extend(pcr, &digests)?;
    let sha256 = hex::encode(digest::digest(&digest::SHA256, event.as_bytes()));
    log(log_file, pcr, &sha256, event);
    console::note(
        "measure",
        &format!("PCR {pcr} extended with sha256:{} {event}", &sha256[..16]),
    );
    Ok(())
}

/// Opens the TPM and extends `pcr` with `event`; without a TPM, nothing happens. Returns
/// whether it was measured.
pub fn event(pcr: u32, event: &str) -> bool {
    match Tpm::open() {
        Ok(None) => false,
        Ok(Some(mut tpm)) => match extend(&mut tpm, pcr, event) {
            Ok(()) => true,
            Err(e) => {
                console::warning(&format!("cannot measure {event:?} into PCR {pcr}: {e}"));
                false
            }
        },
        Err(e) => {
            console::warning(&format!("cannot open the TPM to measure {event:?}: {e}"));
            false
        }
    }
}

/// Appends one line to the event log under `/run` (lost with the boot, like the PCRs).
fn log(path: &Path, pcr: u32, sha256: &str, event: &str) {
    if let Some(dir) = path.parent() {
        let _ = fs::create_dir_all(dir);
    }
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| writeln!(f, "{pcr} {sha256} {event}"));
    if let Err(e) = written {
        console::warning(&format!("cannot write {}: {e}", path.display()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_allocated_bank_gets_its_own_digest() {
        let d = digests(&[ALG_SHA256, ALG_SHA1, 0x0012], "root-hash=ab");
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].0, ALG_SHA1);
        assert_eq!(d[0].1.len(), 20);
        assert_eq!(d[1].0, ALG_SHA256);
        assert_eq!(
            d[1].1,
            crust_format::Digest::of(b"root-hash=ab").0.to_vec(),
            "SHA-256 of the event's text"
        );
        assert!(digests(&[], "x").is_empty());
    }
}
