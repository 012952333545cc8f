//! TLS for outgoing HTTPS (chat webhooks, a remote indexer): weft's HTTP
//! client uses rustls with the `ring` provider, which has to be installed
//! once per process before a client is built.

use std::sync::Once;

/// Installs rustls' `ring` crypto provider for the process (idempotent).
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means another provider was installed first: that one serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
