//! TLS to PostgreSQL, configured the libpq way in `DATABASE_URL`:
//! `sslmode=disable|prefer|require|verify-ca|verify-full` and
//! `sslrootcert=/path/ca.pem` (PEM, one or more certificates).
//!
//! tokio-postgres itself knows only `disable|prefer|require` and no
//! `sslrootcert`, so those two parameters are taken out of the URL here and
//! turned into a rustls client configuration:
//!
//! | sslmode | encryption | server certificate |
//! |---|---|---|
//! | absent, `disable` | none | – |
//! | `prefer` | if the server offers it | not checked |
//! | `require` | required | not checked; with `sslrootcert`, as `verify-ca` (libpq does the same) |
//! | `verify-ca` | required | chains to `sslrootcert` |
//! | `verify-full` | required | chains to `sslrootcert` and names the host |

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::DbError;

/// How the connection is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Plaintext.
    Disable,
    /// TLS when offered, unverified.
    Prefer,
    /// TLS, unverified (or verify-ca with a root certificate).
    Require,
    /// TLS, the chain checked against the root certificate.
    VerifyCa,
    /// TLS, the chain and the host name checked.
    VerifyFull,
}

/// The TLS part of a `DATABASE_URL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `sslmode`.
    pub mode: Mode,
    /// `sslrootcert`.
    pub root_cert: Option<PathBuf>,
}

impl Settings {
    /// The `sslmode` tokio-postgres is given.
    pub fn postgres_mode(&self) -> SslMode {
        match self.mode {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        }
    }
}

/// Takes `sslmode` and `sslrootcert` out of a URL; returns the URL without
/// them and the settings. Key/value connection strings are left alone.
pub fn split(url: &str) -> Result<(String, Settings), DbError> {
    let mut settings = Settings {
        mode: Mode::Disable,
        root_cert: None,
    };
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), settings));
    };
    if !url.contains("://") {
        return Ok((url.to_owned(), settings));
    }
    let mut kept = url::form_urlencoded::Serializer::new(String::new());
    let mut any_kept = false;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "sslmode" => {
                settings.mode = match v.as_ref() {
                    "disable" => Mode::Disable,
                    "allow" | "prefer" => Mode::Prefer,
                    "require" => Mode::Require,
                    "verify-ca" => Mode::VerifyCa,
                    "verify-full" => Mode::VerifyFull,
                    other => {
                        return Err(DbError::Config(format!(
                            "sslmode `{other}`: use disable, prefer, require, verify-ca or verify-full"
                        )));
                    }
                }
            }
            "sslrootcert" => settings.root_cert = Some(PathBuf::from(v.as_ref())),
            _ => {
                kept.append_pair(&k, &v);
                any_kept = true;
            }
        }
    }
    let rest = kept.finish();
    let url = if any_kept {
        format!("{base}?{rest}")
    } else {
        base.to_owned()
    };
    if matches!(settings.mode, Mode::VerifyCa | Mode::VerifyFull) && settings.root_cert.is_none() {
        return Err(DbError::Config(
            "sslmode=verify-ca/verify-full needs sslrootcert=/path/to/ca.pem".into(),
        ));
    }
    Ok((url, settings))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The rustls connector for these settings; `None` for plaintext.
pub fn connector(s: &Settings) -> Result<Option<MakeRustlsConnect>, DbError> {
    if s.mode == Mode::Disable {
        return Ok(None);
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Config(format!("TLS: {e}")))?;
    let roots = match &s.root_cert {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| DbError::Config(format!("sslrootcert {}: {e}", path.display())))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(DbError::Config(format!(
                    "sslrootcert {}: no certificate in it",
                    path.display()
                )));
            }
            Some(Arc::new(roots))
        }
        None => None,
    };
    let config = match (s.mode, roots) {
        (Mode::VerifyFull, Some(roots)) => {
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (Mode::VerifyCa | Mode::Require | Mode::Prefer, Some(roots)) => {
            let inner =
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
                    .build()
                    .map_err(|e| DbError::Config(format!("TLS: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
                .with_no_client_auth()
        }
        (_, _) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider())))
            .with_no_client_auth(),
    };
    Ok(Some(MakeRustlsConnect::new(config)))
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
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
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer`/`require` without a root certificate: encrypted, not
/// authenticated (libpq's behaviour; use verify-full against active attackers).
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_parameters_are_taken_out_of_the_url() {
        let (url, s) = split(
            "postgres://u:p@db:5432/rdev?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .expect("split");
        assert_eq!(url, "postgres://u:p@db:5432/rdev?application_name=x");
        assert_eq!(s.mode, Mode::VerifyFull);
        assert_eq!(s.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(s.postgres_mode(), SslMode::Require);
        let (url, s) = split("postgres://db/rdev?sslmode=require").expect("split");
        assert_eq!(
            (url.as_str(), s.mode),
            ("postgres://db/rdev", Mode::Require)
        );
        let (url, s) = split("postgres://db/rdev").expect("plain");
        assert_eq!(
            (url.as_str(), s.mode),
            ("postgres://db/rdev", Mode::Disable)
        );
        assert!(
            split("postgres://db/rdev?sslmode=verify-full").is_err(),
            "needs a root"
        );
        assert!(split("postgres://db/rdev?sslmode=sometimes").is_err());
    }
}
