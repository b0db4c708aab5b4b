//! The configuration file as figment reads it, with every relative path in it made
//! relative to the file's own directory: `cert_file = "tls.crt"` in
//! `/etc/meshpass/exchange.toml` is `/etc/meshpass/tls.crt` whatever directory the
//! service was started from (systemd starts it in `/`, a shell wherever it stands).
//! Values from `MESHPASS__*` variables and the defaults name no file: they stay
//! relative to the working directory.
//!
//! The paths are named one by one ([`path_kind`]), never by a name's shape: a scope's
//! `claims` table may hold a claim called `x_file`, and its value is no path.

use std::path::{Path, PathBuf};

use figment::providers::{Data, Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Error, Metadata, Profile, Provider};

/// `Toml::file_exact(path)` with its relative paths resolved against `path`'s directory.
pub(super) struct ConfigFile {
    toml: Data<Toml>,
    dir: PathBuf,
}

impl ConfigFile {
    /// Exactly this path: `Toml::file` would look for a relative one in parent
    /// directories too.
    pub(super) fn new(path: &Path) -> Self {
        let dir = path.parent().unwrap_or(Path::new(""));
        // Absolute, so a path it resolves reads the same in any log line or error.
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        ConfigFile {
            toml: Toml::file_exact(path),
            dir,
        }
    }
}

impl Provider for ConfigFile {
    fn metadata(&self) -> Metadata {
        self.toml.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        let mut data = self.toml.data()?;
        for dict in data.values_mut() {
            resolve_dict(dict, &mut Vec::new(), &self.dir);
        }
        Ok(data)
    }

    fn profile(&self) -> Option<Profile> {
        Provider::profile(&self.toml)
    }
}

/// Resolves the paths of `dict`, the table at `parents` (array indices left out).
fn resolve_dict(dict: &mut Dict, parents: &mut Vec<String>, dir: &Path) {
    for (key, value) in dict.iter_mut() {
        let kind = path_kind(parents, key);
        resolve_value(value, kind, key, parents, dir);
    }
}

fn resolve_value(
    value: &mut Value,
    kind: Option<PathKind>,
    key: &str,
    parents: &mut Vec<String>,
    dir: &Path,
) {
    match value {
        Value::String(_, s) => {
            if let Some(resolved) = kind.and_then(|k| k.resolve(s, dir)) {
                *s = resolved;
            }
        }
        Value::Dict(_, d) => {
            parents.push(key.to_string());
            resolve_dict(d, parents, dir);
            parents.pop();
        }
        // `[[issuers]]`: each element is a table at the array's key.
        Value::Array(_, items) => {
            for item in items {
                resolve_value(item, kind, key, parents, dir);
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone, Copy)]
enum PathKind {
    /// A file path.
    File,
    /// A database URL: only a `sqlite:` one names a file.
    StoreUrl,
}

/// Whether `key` of the table at `parents` holds a path: every file the service reads.
fn path_kind(parents: &[String], key: &str) -> Option<PathKind> {
    let parents: Vec<&str> = parents.iter().map(String::as_str).collect();
    match (parents.as_slice(), key) {
        (["server" | "management", "tls"], "cert_file" | "key_file" | "client_ca_file")
        | (["issuers"], "jwks_file" | "ca_file" | "bearer_token_file")
        | (["issuers", "token_review"], "ca_file" | "bearer_token_file")
        | (["management", "kubernetes"], "ca_file" | "bearer_token_file")
        | (["vault"], "ca_cert")
        | (["vault", "auth"], "path" | "secret_id_file" | "jwt_file") => Some(PathKind::File),
        (["store"], "url") => Some(PathKind::StoreUrl),
        _ => None,
    }
}

impl PathKind {
    /// `value` made relative to `dir`, or None to leave it as written (absolute, empty,
    /// not a file, or a directory that is no UTF-8).
    fn resolve(self, value: &str, dir: &Path) -> Option<String> {
        match self {
            PathKind::File => join(dir, value),
            PathKind::StoreUrl => {
                // As the store reads it (`store/config.rs`): `sqlite://rel.db`,
                // `sqlite:///abs.db`; the in-memory form names no file (and is refused).
                let rest = value.trim().strip_prefix("sqlite:")?;
                let rest = rest.strip_prefix("//").unwrap_or(rest);
                if rest.contains(":memory:") {
                    return None;
                }
                join(dir, rest).map(|p| format!("sqlite://{p}"))
            }
        }
    }
}

fn join(dir: &Path, value: &str) -> Option<String> {
    if value.trim().is_empty() || Path::new(value).is_absolute() {
        return None;
    }
    dir.join(value).into_os_string().into_string().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_relative_file_values_are_joined_to_the_directory() {
        let dir = Path::new("/etc/meshpass");
        let f = PathKind::File;
        assert_eq!(
            f.resolve("tls.crt", dir).as_deref(),
            Some("/etc/meshpass/tls.crt")
        );
        assert_eq!(f.resolve("/abs/tls.crt", dir), None);
        assert_eq!(f.resolve("", dir), None);
        let u = PathKind::StoreUrl;
        assert_eq!(
            u.resolve("sqlite://m.db?mode=rwc", dir).as_deref(),
            Some("sqlite:///etc/meshpass/m.db?mode=rwc")
        );
        assert_eq!(u.resolve("sqlite:///var/m.db", dir), None);
        assert_eq!(u.resolve("sqlite:////var/m.db", dir), None);
        assert_eq!(u.resolve("sqlite::memory:", dir), None);
        assert_eq!(u.resolve("postgres://db/m", dir), None);
    }

    #[test]
    fn path_keys_are_named_by_their_place() {
        let p = |parents: &[&str]| parents.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(path_kind(&p(&["issuers", "token_review"]), "bearer_token_file").is_some());
        assert!(path_kind(&p(&["vault"]), "ca_cert").is_some());
        assert!(path_kind(&p(&["vault", "auth"]), "path").is_some());
        assert!(path_kind(&p(&["revocation"]), "path").is_none());
        assert!(path_kind(&p(&["vault"]), "address").is_none());
        assert!(path_kind(&p(&["mappings"]), "name").is_none());
        assert!(path_kind(&p(&["management", "tls"]), "key_file").is_some());
        // A claim's name is the operator's choice: its value is no path.
        assert!(path_kind(&p(&["scope_claims", "claims"]), "config_file").is_none());
    }
}
