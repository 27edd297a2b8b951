//! The `--web-config-file` of `/metrics`: TLS and basic auth in the YAML format Prometheus exporters
//! share (prometheus/exporter-toolkit): `tls_server_config` with `cert_file` and `key_file` (PEM, paths
//! relative to the file), `basic_auth_users` mapping user names to bcrypt hashes. Options of that
//! format vitals does not implement are refused by name rather than ignored.
//!
//! Basic auth as exporter-toolkit does it, and bounded: accepted credentials are remembered so a
//! scraper's password is hashed once, not on every scrape; the hash checks run on a thread of their
//! own behind a bounded, fair queue ([`super::password_check`]); an unknown user name is checked
//! against a hash of the same cost as the configured ones, so it costs what a wrong password costs and
//! user names cannot be told apart by the answer's timing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde::Deserialize;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use super::password_check::{PasswordChecks, QueueFull};

/// Why the web config file cannot be used; each names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    /// The file cannot be read.
    #[error("--web-config-file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The YAML does not match the format (unknown or unsupported fields included).
    #[error("--web-config-file {path}: {message} (vitals supports tls_server_config.cert_file, tls_server_config.key_file and basic_auth_users)")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A certificate or key file is unusable.
    #[error("--web-config-file {path}: tls_server_config.{field} {file}: {message}")]
    Tls {
        /// The config file.
        path: PathBuf,
        /// `cert_file` or `key_file`.
        field: &'static str,
        /// The PEM file.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The thread that checks passwords cannot be started.
    #[error("--web-config-file {path}: cannot start the password check thread: {source}")]
    Thread {
        /// The config file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A password hash is not bcrypt.
    #[error("--web-config-file {path}: basic_auth_users.{user} is not a bcrypt hash (make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)")]
    Hash {
        /// The config file.
        path: PathBuf,
        /// The user.
        user: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    basic_auth_users: HashMap<String, String>,
}

/// Accepted `Authorization` header values remembered, so a scraper's bcrypt check runs once, not on
/// every scrape (bcrypt at cost 10 takes ~50 ms of CPU by design).
const REMEMBERED: usize = 16;

/// TLS and basic auth for the metrics listener.
pub struct WebConfig {
    /// The TLS acceptor, when `tls_server_config` is set.
    pub tls: Option<TlsAcceptor>,
    users: HashMap<String, Arc<str>>,
    /// What an unknown user's password is checked against: a hash of the highest configured cost.
    unknown_user: Arc<str>,
    accepted: Mutex<Vec<String>>,
    checks: Option<PasswordChecks>,
}

/// The answer to a request's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization {
    /// No users configured, or a right user and password.
    Allowed,
    /// No credentials, or wrong ones.
    Denied,
    /// Too many password checks are waiting; answer 429 and let the client retry.
    Busy,
}

/// The cost of a bcrypt hash (`$2y$10$…` → 10).
fn bcrypt_cost(hash: &str) -> Option<u32> {
    hash.get(4..6)?.parse().ok()
}

impl WebConfig {
    /// Reads and checks the file.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Checks the text of a web config file read from `path` (certificate paths are relative to it).
    pub fn parse(text: &str, path: &Path) -> Result<WebConfig, WebConfigError> {
        let file: File = yaml_serde::from_str(text).map_err(|e| WebConfigError::Format {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let tls = match file.tls_server_config {
            None => None,
            Some(t) => Some(tls_acceptor(
                path,
                &base.join(t.cert_file),
                &base.join(t.key_file),
            )?),
        };
        let mut cost = None;
        for (user, hash) in &file.basic_auth_users {
            let this = bcrypt_cost(hash)
                .filter(|c| hash.starts_with("$2") && hash.len() == 60 && (4..=31).contains(c));
            let Some(this) = this else {
                return Err(WebConfigError::Hash {
                    path: path.to_owned(),
                    user: user.clone(),
                });
            };
            cost = cost.max(Some(this));
        }
        let (unknown_user, checks) = match cost {
            None => (Arc::from(""), None),
            Some(cost) => {
                // Made once at start, at the configured cost: checking an unknown user then takes
                // what checking a known one does.
                let dummy = bcrypt::hash("vitals: no such user", cost).map_err(|e| {
                    WebConfigError::Format {
                        path: path.to_owned(),
                        message: format!("basic_auth_users: {e}"),
                    }
                })?;
                let checks = PasswordChecks::start().map_err(|source| WebConfigError::Thread {
                    path: path.to_owned(),
                    source,
                })?;
                (Arc::from(dummy), Some(checks))
            }
        };
        Ok(WebConfig {
            tls,
            users: file
                .basic_auth_users
                .into_iter()
                .map(|(u, h)| (u, Arc::from(h)))
                .collect(),
            unknown_user,
            accepted: Mutex::new(Vec::new()),
            checks,
        })
    }

    /// True when requests must carry a user and password.
    pub fn needs_auth(&self) -> bool {
        !self.users.is_empty()
    }

    /// Checks an `Authorization` header from `peer` against `basic_auth_users`: remembered accepted
    /// headers at once, the rest through the password check queue. The check and the remembering go on
    /// when the client gives up waiting (a scraper whose timeout is shorter than a queued check), so its
    /// next request finds the answer remembered instead of queueing again.
    pub async fn authorize(self: &Arc<Self>, header: Option<&str>, peer: IpAddr) -> Authorization {
        if self.checks.is_none() || !self.needs_auth() {
            return Authorization::Allowed;
        }
        let Some(header) = header else {
            return Authorization::Denied;
        };
        if self
            .accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|h| h == header)
        {
            return Authorization::Allowed;
        }
        let Some((user, password)) = basic_credentials(header) else {
            return Authorization::Denied;
        };
        let (hash, known) = match self.users.get(&user) {
            Some(h) => (h.clone(), true),
            None => (self.unknown_user.clone(), false),
        };
        let me = self.clone();
        let header = header.to_owned();
        let checked = tokio::spawn(async move {
            let Some(checks) = me.checks.as_ref() else {
                return Authorization::Denied;
            };
            match checks.check(peer, password, hash).await {
                Err(QueueFull) => Authorization::Busy,
                Ok(true) if known => {
                    let mut accepted = me.accepted.lock().unwrap_or_else(|p| p.into_inner());
                    if accepted.len() == REMEMBERED {
                        accepted.remove(0);
                    }
                    accepted.push(header);
                    Authorization::Allowed
                }
                Ok(_) => Authorization::Denied,
            }
        });
        checked.await.unwrap_or(Authorization::Denied)
    }
}

/// `Basic base64(user:password)` → (user, password).
pub fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, value) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") || value.len() > 1024 {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn tls_acceptor(config: &Path, cert: &Path, key: &Path) -> Result<TlsAcceptor, WebConfigError> {
    let fail = |field: &'static str, file: &Path, message: String| WebConfigError::Tls {
        path: config.to_owned(),
        field,
        file: file.to_owned(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| fail("cert_file", cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| fail("cert_file", cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("cert_file", cert, "no certificate in the file".into()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| fail("key_file", key, e.to_string()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let server = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("cert_file", cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            fail(
                "key_file",
                cert,
                format!("does not match the certificate: {e}"),
            )
        })?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_parsed() {
        let h = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("prom:s3cret:x")
        );
        assert_eq!(
            basic_credentials(&h),
            Some(("prom".into(), "s3cret:x".into()))
        );
        assert_eq!(basic_credentials("Bearer abc"), None);
        assert_eq!(basic_credentials("Basic !!!"), None);
    }

    #[test]
    fn unsupported_fields_and_bad_hashes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("web.yml");
        std::fs::write(&p, "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireAndVerifyClientCert\n").unwrap();
        let e = WebConfig::load(&p).err().unwrap().to_string();
        assert!(
            e.contains("client_auth_type") && e.contains("web.yml"),
            "{e}"
        );
        std::fs::write(&p, "basic_auth_users:\n  prom: plain\n").unwrap();
        let e = WebConfig::load(&p).err().unwrap().to_string();
        assert!(e.contains("basic_auth_users.prom"), "{e}");
        std::fs::write(
            &p,
            "tls_server_config:\n  cert_file: missing.pem\n  key_file: k\n",
        )
        .unwrap();
        let e = WebConfig::load(&p).err().unwrap().to_string();
        assert!(e.contains("cert_file") && e.contains("missing.pem"), "{e}");
    }
}
