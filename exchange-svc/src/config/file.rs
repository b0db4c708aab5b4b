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

use crate::store::{sqlite_in_memory, sqlite_path};

/// `Toml::file_exact(path)` with its relative paths resolved against `path`'s directory
/// (absolute, so a path it resolves reads the same in any log line or error; a symlink
/// is not followed: a ConfigMap mounts each key as a link beside the others).
pub(super) struct ConfigFile {
    toml: Data<Toml>,
    dir: PathBuf,
}

impl ConfigFile {
    /// Exactly this path: `Toml::file` would look for a relative one in parent
    /// directories too.
    pub(super) fn new(path: &Path) -> Self {
        ConfigFile {
            toml: Toml::file_exact(path),
            dir: dir_of(path),
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
                // The in-memory form names no file (and the store refuses it).
                let rest = sqlite_path(value)?;
                if sqlite_in_memory(rest) {
                    return None;
                }
                join(dir, rest).map(|p| format!("sqlite://{p}"))
            }
        }
    }
}

/// The directory of the configuration file `path` as [`ConfigFile`] joins paths to.
pub(super) fn dir_of(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new(""));
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Why a SQLite `url` must not be opened: the file read beside the configuration in
/// `dir` does not exist yet, while the working directory holds a file under the same
/// relative name, which is where the releases before this one read a relative path
/// from. Opening it would start the service on a new, empty database after an upgrade.
pub(super) fn database_left_behind(url: &str, dir: &Path) -> Option<String> {
    let file = Path::new(sqlite_path(url)?.split('?').next()?);
    let relative = file.strip_prefix(dir).ok()?;
    let old = std::env::current_dir().ok()?.join(relative);
    if old == file || file.exists() || !old.is_file() {
        return None;
    }
    Some(format!(
        "a relative SQLite path is read beside the configuration file: {} does not exist, \
         while the working directory holds {} (where a relative path was read before); \
         move the database beside the file, or write its absolute path",
        file.display(),
        old.display()
    ))
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
        assert_eq!(u.resolve("sqlite://m.db?mode=memory", dir), None);
        assert_eq!(
            u.resolve("sqlite:m.db", dir).as_deref(),
            Some("sqlite:///etc/meshpass/m.db")
        );
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
