//! rustls client settings for each libpq `sslmode`, shared by the replication and the SQL connections.

use super::conninfo::{ConnInfo, SslMode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why TLS could not be set up or negotiated.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The root certificate file could not be read or holds no certificate.
    #[error("reading sslrootcert {path}: {reason}")]
    RootCert {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A verifying mode was asked for without any root certificate to verify with.
    #[error(
        "sslmode {0} needs trusted roots: set sslrootcert to a PEM file \
         (or to `system` for the public web roots)"
    )]
    NoRootCert(&'static str),
    /// The host is neither a DNS name nor an IP address usable for TLS.
    #[error("the host is not a valid TLS server name")]
    InvalidServerName,
    /// rustls refused the settings.
    #[error("building the TLS settings: {0}")]
    Config(#[source] rustls::Error),
    /// The server answered the TLS request with "no".
    #[error("the server does not support TLS, but sslmode requires it")]
    NotSupported,
    /// The TLS handshake failed (untrusted certificate, wrong host name, protocol mismatch...).
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] std::io::Error),
}

/// The rustls client settings for `info.sslmode`, or `None` when TLS is disabled.
///
/// `prefer` and a `require` without `sslrootcert` encrypt without verifying, as libpq does; `require` with
/// `sslrootcert` verifies the chain like `verify-ca` (libpq's backward-compatible behaviour).
pub fn client_config(info: &ConnInfo) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let no_name_check = |chain| -> Arc<dyn ServerCertVerifier> {
        Arc::new(NoNameCheck {
            chain,
            provider: provider.clone(),
        })
    };
    let verifier = match info.sslmode {
        SslMode::Disable => return Ok(None),
        SslMode::Prefer => no_name_check(None),
        SslMode::Require if info.sslrootcert.is_none() => no_name_check(None),
        SslMode::Require | SslMode::VerifyCa => {
            no_name_check(Some(webpki_verifier(info, provider.clone())?))
        }
        SslMode::VerifyFull => webpki_verifier(info, provider.clone())?,
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

/// The name the server's certificate must carry: a DNS name or an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string()).map_err(|_| TlsError::InvalidServerName)
}

/// The standard chain-and-name verifier over the configured roots.
fn webpki_verifier(
    info: &ConnInfo,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    let roots = root_store(info)?;
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))
}

/// Trusted roots: `sslrootcert`, the web roots for `system`, or libpq's `~/.postgresql/root.crt`.
fn root_store(info: &ConnInfo) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    let path = match &info.sslrootcert {
        Some(path) if path.as_os_str() == "system" => {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            return Ok(store);
        }
        Some(path) => path.clone(),
        None => {
            let default = std::env::var_os("HOME")
                .map(|home| Path::new(&home).join(".postgresql/root.crt"))
                .filter(|p| p.is_file());
            default.ok_or(TlsError::NoRootCert(info.sslmode.as_str()))?
        }
    };
    let root_error = |reason: String| TlsError::RootCert {
        path: path.clone(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| root_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| root_error(e.to_string()))?;
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(root_error("no usable certificate in the file".to_string()));
    }
    Ok(store)
}

/// The verifier of the modes that do not check the host name. With `chain` (`verify-ca`, and
/// `require` with roots) the chain is checked against the roots but any host name is accepted;
/// without (`prefer`, `require`) any certificate is accepted: encryption against passive
/// eavesdroppers only. Either way the handshake signatures are checked, with the algorithms the
/// standard verifier uses (the provider's), so the server must hold the key of the certificate it sent.
#[derive(Debug)]
struct NoNameCheck {
    /// The standard verifier whose chain check is kept, if any.
    chain: Option<Arc<WebPkiServerVerifier>>,
    /// The provider of the signature algorithms.
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoNameCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            // The name check runs only after the chain has verified, so this error means a good chain.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `s`.
    fn info(s: &str) -> ConnInfo {
        s.parse().unwrap()
    }

    #[test]
    fn disable_needs_no_tls_settings() {
        assert!(client_config(&info("user=u sslmode=disable"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn prefer_and_require_build_without_roots() {
        assert!(client_config(&info("user=u")).unwrap().is_some());
        assert!(client_config(&info("user=u sslmode=require"))
            .unwrap()
            .is_some());
    }

    #[test]
    fn a_missing_root_file_is_reported_with_its_path() {
        let err = client_config(&info(
            "user=u sslmode=verify-full sslrootcert=/nonexistent/ca.pem",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn system_roots_are_available_for_verify_full() {
        assert!(
            client_config(&info("user=u sslmode=verify-full sslrootcert=system"))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn ip_addresses_and_dns_names_are_server_names() {
        assert!(server_name("127.0.0.1").is_ok());
        assert!(server_name("db.example.com").is_ok());
        assert!(server_name("not a name").is_err());
    }
}
