//! Checking a downloaded bundle before anything is written, reading it once as a stream:
//! the header's signature (the image's key), that it is this image's next version for this
//! disk layout, the file's size, and every part's digest. Nothing is held in memory but the
//! header and a read buffer, whatever the bundle's size (PID 1 must never allocate by a
//! peer's measure).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crust_format::bundle::{self, Header, MAX_HEADER};
use crust_format::signature::{PublicKey, SIGNATURE_LEN};
use crust_format::{Digest, Manifest};
use sha2::Digest as _;

/// A bundle that checked out, and where its parts start.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The signed header.
    pub header: Header,
    /// The header's length (parts start after it and the signature).
    pub header_len: u64,
}

/// Checks the bundle at `path` for `version` of the running image `running`. An error
/// says what is wrong with the bundle (the caller adds that it was refused).
pub fn verify(
    path: &Path,
    key: &PublicKey,
    running: &Manifest,
    version: &str,
) -> Result<Verified, String> {
    let mut file = File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    let size = file
        .metadata()
        .map_err(|e| format!("cannot read its size: {e}"))?
        .len();
    let mut prefix = [0u8; 12];
    file.read_exact(&mut prefix)
        .map_err(|_| "it is truncated".to_owned())?;
    let len = bundle::header_len(&prefix).map_err(|e| e.to_string())?;
    debug_assert!(len <= MAX_HEADER);
    let mut text = vec![0u8; len as usize];
    let mut sig = [0u8; SIGNATURE_LEN];
    file.read_exact(&mut text)
        .and_then(|()| file.read_exact(&mut sig))
        .map_err(|_| "it is truncated".to_owned())?;
    key.verify(&text, &sig)
        .map_err(|e| format!("header signature: {e}"))?;
    let header = Header::parse(&String::from_utf8_lossy(&text)).map_err(|e| e.to_string())?;
    if header.name != running.name || header.version != version {
        return Err(format!(
            "it holds {} {}, not {} {version}",
            header.name, header.version, running.name
        ));
    }
    if header.layout != running.layout {
        return Err(format!(
            "it needs disk layout {} but this disk has layout {}",
            header.layout, running.layout
        ));
    }
    let header_len = u64::from(len);
    if header.file_size(header_len) != size {
        return Err("its size does not match its header".into());
    }
    let mut buf = vec![0u8; 64 << 10];
    for part in &header.parts {
        let mut hasher = sha2::Sha256::new();
        let mut left = part.size;
        while left > 0 {
            let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            file.read_exact(&mut buf[..n])
                .map_err(|_| "it is truncated".to_owned())?;
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        if Digest(hasher.finalize().into()) != part.sha256 {
            return Err(format!(
                "the {} part does not match its digest",
                part.kind.as_str()
            ));
        }
    }
    Ok(Verified { header, header_len })
}

/// The SHA-256 of a file, read as a stream; `None` if it cannot be read.
pub fn file_digest(path: &Path) -> Option<Digest> {
    let mut file = File::open(path).ok()?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Some(Digest(hasher.finalize().into()))
}
