//! etcd's errors as the store reports them, in words a person can act on.

use crate::store::StoreError;

pub(super) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// An etcd client error as a store error.
pub(super) fn etcd_unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(describe(&e))
}

/// An etcd client error in words a person can act on. The client's own text says little about
/// what to fix when TLS or authentication is wrong ("invalid peer certificate: UnknownIssuer",
/// a bare "transport error", or only "operation was canceled" when etcd drops a client whose
/// certificate it does not accept): those say what failed and which flags to check; any other
/// error is the client's text.
pub fn describe(e: &etcd_client::Error) -> String {
    let full = e.to_string();
    let message = match e {
        etcd_client::Error::GRpcStatus(s) => s.message().to_string(),
        _ => full.clone(),
    };
    if let Some(at) = full.find("invalid peer certificate") {
        let why = if message.contains("invalid peer certificate") {
            message
        } else {
            full[at..].to_string()
        };
        return if why.contains("UnknownIssuer") {
            format!(
                "etcd's TLS certificate could not be verified: it is not signed by the CA given \
                 with --etcd-ca (or no --etcd-ca was given) ({why})"
            )
        } else {
            format!(
                "etcd's TLS certificate could not be verified ({why}): it must be signed by the \
                 CA given with --etcd-ca, name the host of the etcd URL, and be in date"
            )
        };
    }
    if let Some(at) = full.find("received fatal alert: ") {
        let alert: String = full[at + "received fatal alert: ".len()..]
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        let about_the_client = [
            "BadCertificate",
            "CertificateRequired",
            "UnknownCA",
            "CertificateUnknown",
            "UnsupportedCertificate",
            "CertificateExpired",
            "AccessDenied",
        ];
        return if about_the_client.contains(&alert.as_str()) {
            format!(
                "etcd refused this client's TLS certificate (received fatal alert: {alert}): an \
                 etcd with --client-cert-auth needs a client certificate signed by a CA in its \
                 --trusted-ca-file, given with --etcd-cert and --etcd-key"
            )
        } else {
            format!("the TLS handshake with etcd failed (received fatal alert: {alert})")
        };
    }
    if let etcd_client::Error::GRpcStatus(s) = e {
        let closed = (s.code() == tonic::Code::Cancelled && full.contains("connection closed"))
            || full.contains("broken pipe");
        if closed {
            return "etcd closed the connection: it stopped, or it requires client \
                    certificates (--client-cert-auth) and does not accept this client's: give \
                    a client certificate signed by a CA in its --trusted-ca-file with \
                    --etcd-cert and --etcd-key"
                .to_string();
        }
    }
    if message.contains("authentication failed") {
        return format!(
            "etcd refused the user or password (--etcd-user, --etcd-password): {message}"
        );
    }
    if message.contains("user name is empty") {
        return format!(
            "etcd requires authentication: give --etcd-user and --etcd-password ({message})"
        );
    }
    if message.contains("TLS options are only supported with HTTPS URLs") {
        return format!(
            "--etcd-ca, --etcd-cert and --etcd-key need https:// etcd URLs ({message})"
        );
    }
    full
}
