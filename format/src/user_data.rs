//! What user-data may be and do on a host: the policy the builder bakes into the verified
//! root from the profile's `[config]` table, and the forms a user-data signature takes.
//!
//! User-data is code: it can change what a service runs. So the image, not the user-data,
//! decides which sources count (in order), whether user-data needs an Ed25519 signature
//! and by which keys, and what it may change. The policy is a `key=value` text file at
//! [`POLICY_PATH`] in the root (strict, like the manifest: unknown, repeated or missing keys
//! are refused):
//!
//! ```text
//! format=1
//! sources=cmdline nocloud install imds image
//! signed=1
//! key=<64 hex digits: a raw Ed25519 public key>      (one line per key)
//! allow=services pull
//! ```
//!
//! A signature is Ed25519 over [`CONTEXT`] followed by the exact user-data bytes (the
//! context keeps a user-data signature from ever passing for a manifest's, an index's or
//! a bundle's, which the same key may sign). It travels in one of two forms:
//!
//! - **detached**: the raw 64 bytes in a file beside the user-data (`user-data.sig` on a
//!   NoCloud seed), as `cargo xtask sign-user-data` writes it;
//! - **inline**, for sources that carry one blob (EC2 IMDS, `crust.config=`): the user-data
//!   followed by one last line `# crust-signature: ed25519 <128 hex digits>` and a newline.
//!   It is a TOML comment, so the document stays valid TOML; the signature covers every byte
//!   before that line.

use std::fmt;

use crate::signature::{PublicKey, SIGNATURE_LEN, SignatureError};

/// Where the policy lives in the root (no leading `/`, as in trees).
pub const POLICY_PATH: &str = "usr/lib/crust/config-policy";
/// The policy format this crate reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// What a user-data signature covers before the user-data bytes.
pub const CONTEXT: &[u8] = b"crust user-data v1\n";
/// The start of an inline signature line.
pub const INLINE_PREFIX: &str = "# crust-signature: ed25519 ";
/// The file name of a detached signature on a NoCloud seed.
pub const SEED_SIGNATURE_FILE: &str = "user-data.sig";

/// A place user-data can come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// `crust.config=` on the kernel command line.
    Cmdline,
    /// A NoCloud seed (a disk labelled `CIDATA` that is not the boot disk).
    NoCloud,
    /// The user-data the installer copied from its medium onto the boot disk's ESP, with
    /// the medium's list that covers it, signed by the image's own key
    /// ([`crate::install::ESP_DIR`]).
    Install,
    /// EC2's instance metadata service (IMDSv2).
    Imds,
    /// The image's own default, `/usr/lib/crust/config.toml` in the verified root.
    Image,
}

impl Source {
    /// Every source, in the default order.
    pub const ALL: [Source; 5] = [
        Source::Cmdline,
        Source::NoCloud,
        Source::Install,
        Source::Imds,
        Source::Image,
    ];

    /// The name in profiles and in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cmdline => "cmdline",
            Source::NoCloud => "nocloud",
            Source::Install => "install",
            Source::Imds => "imds",
            Source::Image => "image",
        }
    }

    /// Parses a name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether user-data from this source needs a signature under `signed = true` (the
    /// image's default is in the verified root, so it is already the image's word; the
    /// installer's user-data counts only with the image's own key's signature over its
    /// list, checked by the source whatever `signed` says).
    pub fn needs_signature(self) -> bool {
        !matches!(self, Source::Image | Source::Install)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something user-data may be allowed to do beyond host settings (name, network, time,
/// sysctls, modules, update settings), which it may always set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// Change the image's containers (command, environment, restart), turn services off,
    /// and add containers from images in the root (not the admin container's).
    Services,
    /// Add services whose images containerd pulls (pinned by digest).
    Pull,
    /// Change the admin container, or start containers from its image (every capability,
    /// the host's PID namespace).
    Admin,
    /// Change the command or environment of host programs (such as containerd), which run
    /// as root in the host's namespaces.
    Host,
    /// Declare data volumes (`[[volume]]`): the host formats a declared disk that is empty
    /// and mounts it, and the services user-data adds may mount volumes. Formatting is
    /// destructive and a mounted disk hands its data to containers, so it is the image's to
    /// allow.
    Volumes,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Permission; 5] = [
        Permission::Services,
        Permission::Pull,
        Permission::Admin,
        Permission::Host,
        Permission::Volumes,
    ];

    /// The name in profiles and in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Services => "services",
            Permission::Pull => "pull",
            Permission::Admin => "admin",
            Permission::Host => "host",
            Permission::Volumes => "volumes",
        }
    }

    /// Parses a name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The policy an image holds for its user-data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The sources tried, in order; the first that has user-data wins.
    pub sources: Vec<Source>,
    /// Whether user-data needs a valid signature by one of `keys`.
    pub signed: bool,
    /// The keys that may sign user-data.
    pub keys: Vec<PublicKey>,
    /// What user-data may do beyond host settings, sorted.
    pub allow: Vec<Permission>,
}

impl Default for Policy {
    /// The policy of an image that carries none: every source in the default order, no
    /// signature, containers only.
    fn default() -> Self {
        Self {
            sources: Source::ALL.to_vec(),
            signed: false,
            keys: Vec::new(),
            allow: vec![Permission::Services],
        }
    }
}

/// A policy file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("user-data policy: {0}")]
pub struct PolicyError(pub String);

impl Policy {
    /// Whether user-data may do `p`.
    pub fn allows(&self, p: Permission) -> bool {
        self.allow.contains(&p)
    }

    /// The policy's text (what the builder writes).
    pub fn to_text(&self) -> String {
        let join = |items: Vec<&str>| items.join(" ");
        let mut s = format!(
            "format={FORMAT_VERSION}\nsources={}\nsigned={}\n",
            join(self.sources.iter().map(|s| s.as_str()).collect()),
            u8::from(self.signed)
        );
        for key in &self.keys {
            s.push_str(&format!("key={}\n", hex::encode(key.to_bytes())));
        }
        let mut allow = self.allow.clone();
        allow.sort();
        allow.dedup();
        s.push_str(&format!(
            "allow={}\n",
            join(allow.iter().map(|p| p.as_str()).collect())
        ));
        s
    }

    /// Parses a policy file; strict, so a damaged or foreign file is never half-read.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let bad = |m: String| PolicyError(m);
        let (mut format, mut sources, mut signed, mut allow) = (None, None, None, None);
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| bad(format!("line {}: expected key=value", n + 1)))?;
            let slot = match key {
                "format" => &mut format,
                "sources" => &mut sources,
                "signed" => &mut signed,
                "allow" => &mut allow,
                "key" => {
                    let raw = hex::decode(value)
                        .map_err(|_| bad(format!("line {}: key is not hex", n + 1)))?;
                    let key = PublicKey::from_bytes(&raw)
                        .map_err(|e| bad(format!("line {}: {e}", n + 1)))?;
                    keys.push(key);
                    continue;
                }
                other => return Err(bad(format!("line {}: unknown key {other:?}", n + 1))),
            };
            if slot.replace(value).is_some() {
                return Err(bad(format!("line {}: {key} given twice", n + 1)));
            }
        }
        if format != Some("1") {
            return Err(bad("missing or unsupported format".into()));
        }
        let mut seen = Vec::new();
        for name in sources.ok_or_else(|| bad("no sources".into()))?.split(' ') {
            let source = Source::parse(name).ok_or_else(|| bad(format!("source {name:?}")))?;
            if seen.contains(&source) {
                return Err(bad(format!("source {name} given twice")));
            }
            seen.push(source);
        }
        let signed = match signed {
            Some("0") => false,
            Some("1") => true,
            other => return Err(bad(format!("signed {other:?} is not 0 or 1"))),
        };
        if signed && keys.is_empty() {
            return Err(bad("signed=1 but no key".into()));
        }
        let mut allowed = Vec::new();
        for name in allow
            .ok_or_else(|| bad("no allow".into()))?
            .split(' ')
            .filter(|n| !n.is_empty())
        {
            let p = Permission::parse(name).ok_or_else(|| bad(format!("permission {name:?}")))?;
            allowed.push(p);
        }
        allowed.sort();
        allowed.dedup();
        Ok(Self {
            sources: seen,
            signed,
            keys,
            allow: allowed,
        })
    }

    /// Checks a signature over `data` against every key; `Ok` names the key that signed.
    pub fn verify(&self, data: &[u8], signature: &[u8]) -> Result<&PublicKey, UnsignedError> {
        if signature.len() != SIGNATURE_LEN {
            return Err(UnsignedError::Bad(SignatureError::SignatureLength(
                signature.len(),
            )));
        }
        let message = signed_message(data);
        self.keys
            .iter()
            .find(|k| k.verify(&message, signature).is_ok())
            .ok_or(UnsignedError::Bad(SignatureError::Mismatch))
    }
}

/// Why user-data does not count as signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsignedError {
    /// No signature came with it.
    #[error("it carries no signature")]
    Missing,
    /// A signature came, but it is not by a key the image trusts (or the data changed).
    #[error("its signature is not valid for any key this image trusts ({0})")]
    Bad(SignatureError),
    /// An inline signature line that cannot be read.
    #[error("its signature line is malformed ({0})")]
    Malformed(&'static str),
}

/// The bytes a user-data signature covers: [`CONTEXT`], then the user-data.
pub fn signed_message(data: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(CONTEXT.len() + data.len());
    message.extend_from_slice(CONTEXT);
    message.extend_from_slice(data);
    message
}

/// User-data and the inline signature that followed it.
pub type Inline<'a> = (&'a [u8], [u8; SIGNATURE_LEN]);

/// Splits user-data that may end in an inline signature line: the data (every byte before
/// the line) and the signature. `Ok(None)` when the last line is no signature line.
pub fn split_inline(bytes: &[u8]) -> Result<Option<Inline<'_>>, UnsignedError> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let start = body
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |at| at + 1);
    let last = &body[start..];
    let Some(hex_sig) = last.strip_prefix(INLINE_PREFIX.as_bytes()) else {
        return Ok(None);
    };
    let hex_sig = hex_sig.strip_suffix(b"\r").unwrap_or(hex_sig);
    if hex_sig.len() != SIGNATURE_LEN * 2 {
        return Err(UnsignedError::Malformed("not 128 hex digits"));
    }
    let mut signature = [0u8; SIGNATURE_LEN];
    hex::decode_to_slice(hex_sig, &mut signature)
        .map_err(|_| UnsignedError::Malformed("not hex digits"))?;
    Ok(Some((&bytes[..start], signature)))
}

/// The inline form: `data` (ending in a newline, added if missing) and the signature line.
pub fn inline(data: &[u8], signature: &[u8; SIGNATURE_LEN]) -> Vec<u8> {
    let mut out = data.to_vec();
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(INLINE_PREFIX.as_bytes());
    out.extend_from_slice(hex::encode(signature).as_bytes());
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn policy(signed: bool) -> Policy {
        Policy {
            sources: vec![Source::Imds, Source::Image],
            signed,
            keys: vec![PublicKey::from_verifying_key(key(1).verifying_key())],
            allow: vec![Permission::Services, Permission::Pull],
        }
    }

    #[test]
    fn policies_round_trip_and_refuse_what_they_do_not_know() {
        let p = policy(true);
        let text = p.to_text();
        assert!(
            text.starts_with("format=1\nsources=imds image\nsigned=1\nkey="),
            "{text}"
        );
        assert!(text.ends_with("allow=services pull\n"), "{text}");
        assert_eq!(Policy::parse(&text).unwrap(), p);
        assert_eq!(
            Policy::parse(&Policy::default().to_text()).unwrap(),
            Policy::default()
        );
        for bad in [
            text.replace("format=1", "format=2"),
            text.replace("imds image", "imds usb"),
            text.replace("imds image", "imds imds"),
            text.replace("allow=services pull", "allow=root"),
            text.replace("signed=1", "signed=yes"),
            format!("{text}colour=red\n"),
            format!("{text}signed=0\n"),
            "format=1\nsources=imds\nsigned=1\nallow=\n".into(),
        ] {
            assert!(Policy::parse(&bad).is_err(), "{bad}");
        }
        let none = Policy::parse("format=1\nsources=image\nsigned=0\nallow=\n").unwrap();
        assert!(none.allow.is_empty() && !none.allows(Permission::Services));
    }

    #[test]
    fn signatures_cover_the_context_and_the_exact_bytes() {
        let p = policy(true);
        let data = b"version = 1\nhostname = \"a\"\n";
        let sig = key(1).sign(&signed_message(data)).to_bytes();
        assert!(p.verify(data, &sig).is_ok());
        // The same key's signature over the bare bytes (as a manifest's would be) is not one.
        let bare = key(1).sign(data).to_bytes();
        assert!(matches!(p.verify(data, &bare), Err(UnsignedError::Bad(_))));
        assert!(p.verify(b"version = 1\nhostname = \"b\"\n", &sig).is_err());
        let foreign = key(2).sign(&signed_message(data)).to_bytes();
        assert!(p.verify(data, &foreign).is_err());
        assert!(p.verify(data, &sig[..10]).is_err());
    }

    #[test]
    fn inline_signatures_split_off_the_last_line() {
        let data = b"version = 1\nhostname = \"a\"\n";
        let sig = key(1).sign(&signed_message(data)).to_bytes();
        let signed = inline(data, &sig);
        let (body, found) = split_inline(&signed).unwrap().unwrap();
        assert_eq!(body, data);
        assert_eq!(found, sig);
        assert!(policy(true).verify(body, &found).is_ok());
        // Without the trailing newline, and with CRLF.
        let trimmed = &signed[..signed.len() - 1];
        assert_eq!(split_inline(trimmed).unwrap().unwrap().0, data);
        let mut crlf = signed[..signed.len() - 1].to_vec();
        crlf.extend_from_slice(b"\r\n");
        assert_eq!(split_inline(&crlf).unwrap().unwrap().1, sig);
        assert_eq!(split_inline(data).unwrap(), None);
        assert_eq!(split_inline(b"").unwrap(), None);
        let short = format!("version = 1\n{INLINE_PREFIX}abcd\n");
        assert!(matches!(
            split_inline(short.as_bytes()),
            Err(UnsignedError::Malformed(_))
        ));
        // A signature line that is not the last line is no signature.
        let mut moved = signed.clone();
        moved.extend_from_slice(b"hostname = \"evil\"\n");
        assert_eq!(split_inline(&moved).unwrap(), None);
    }
}
