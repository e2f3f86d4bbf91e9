//! The TLS of the stores' clients (PostgreSQL, ClickHouse over HTTPS).

use std::{path::Path, sync::Arc};

use rustls::pki_types::{CertificateDer, pem::PemObject as _};

/// A client's TLS: the system's roots and `ca` (PEM, one certificate or more); the server's
/// certificate and name are always checked.
pub(crate) fn client_config(ca: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates only narrow what is trusted.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(ca) = ca {
        let mut n = 0;
        for cert in CertificateDer::pem_file_iter(ca)
            .map_err(|e| anyhow::anyhow!("reading the CA {}: {e}", ca.display()))?
        {
            let cert = cert.map_err(|e| anyhow::anyhow!("the CA {}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| anyhow::anyhow!("the CA {}: {e}", ca.display()))?;
            n += 1;
        }
        anyhow::ensure!(n > 0, "the CA {} holds no certificate", ca.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
