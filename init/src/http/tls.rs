//! TLS for `https://` update repositories and etcd members: rustls (with ring), the Mozilla
//! root store compiled into the verified init (webpki-roots), plus certificate authorities
//! the user-data adds, and optionally a client certificate (etcd's mutual TLS).
//!
//! Nothing here loosens verification: certificates are checked against the roots and the
//! URL's host name, always; there is no "insecure" switch. (An update repository needs no
//! TLS to be safe — indexes and bundles are signed — but repositories, CDNs and proxies are
//! often reachable only over https.)

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// What trust a TLS client needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    /// Extra certificate authorities, PEM.
    pub ca_certificates: Vec<String>,
    /// A client certificate chain and its key, PEM.
    pub client: Option<(String, String)>,
}

/// A client configuration for `trust`.
pub fn config(trust: &Trust) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for (i, pem) in trust.ca_certificates.iter().enumerate() {
        let mut found = 0;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("CA certificate {i}: not PEM ({e})"))?;
            roots
                .add(cert)
                .map_err(|e| format!("CA certificate {i}: {e}"))?;
            found += 1;
        }
        if found == 0 {
            return Err(format!("CA certificate {i}: no certificate in it"));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots);
    let config = match &trust.client {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(chain.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("client certificate: not PEM ({e})"))?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| format!("client key: not a PEM private key ({e})"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
    };
    Ok(Arc::new(config))
}

/// A stream that reads and writes (TCP, or TLS over it).
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// Wraps `tcp` in TLS to `host` and completes the handshake.
pub fn connect<S: Read + Write + Send + 'static>(
    config: Arc<ClientConfig>,
    host: &str,
    tcp: S,
) -> Result<Box<dyn Stream>, String> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| format!("{host:?} is not a name TLS can check"))?;
    let conn = ClientConnection::new(config, name).map_err(|e| format!("TLS: {e}"))?;
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| format!("TLS handshake with {host}: {e}"))?;
    }
    Ok(Box::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_authorities_must_be_certificates() {
        assert!(config(&Trust::default()).is_ok());
        let bad = Trust {
            ca_certificates: vec!["not a certificate".into()],
            client: None,
        };
        assert!(config(&bad).unwrap_err().contains("no certificate"));
    }
}
