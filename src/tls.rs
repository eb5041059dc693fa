//! TLS for the HTTP clients (registry API now, GitHub later): rustls with the
//! `ring` provider, which builds without a C toolchain for aws-lc.

/// Installs the process-wide rustls provider; later calls do nothing.
pub fn install_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
