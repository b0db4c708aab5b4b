//! `[store]` settings: which database, the pool, the policy cache; checked before any
//! connection is made.

use serde::{Deserialize, Serialize};

use super::StoreError;

/// `[store]` settings (`Debug` shows the URL without its password or query).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` (created if missing) or `postgres://USER@HOST:PORT/DB`.
    pub url: String,
    /// Pool size (writes are serialised in the process before they take a connection).
    pub max_connections: u32,
    /// Connections kept open.
    pub min_connections: u32,
    /// How long a request waits for a connection before the store counts as down; on
    /// PostgreSQL also the longest a write waits for the write lock (then 503).
    pub acquire_timeout_secs: u64,
    /// Idle connections are closed after this long.
    pub idle_timeout_secs: u64,
    /// `Retry-After` sent with 503 when the store is down.
    pub retry_after_secs: u64,
    /// Seconds a resource's mappings and scope claims are served from memory before
    /// the database is asked again (0: ask on every exchange). Writes through this
    /// process take effect at once; other replicas' writes within this bound.
    pub policy_cache_secs: u64,
    /// Longest a snapshot's rows are served while version checks confirm that nothing
    /// changed, instead of reading the resource again every `policy_cache_secs`: writes
    /// through meshpass still show within `policy_cache_secs`, writes that bypass it
    /// (direct SQL) within this (equal to `policy_cache_secs`: no checks).
    pub policy_max_age_secs: u64,
    /// How often each replica reads the change version, the fallback for missed
    /// `LISTEN`/`NOTIFY` notifications (`crate::change_feed`).
    pub change_check_interval_ms: u64,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &crate::redact::url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("min_connections", &self.min_connections)
            .field("acquire_timeout_secs", &self.acquire_timeout_secs)
            .field("idle_timeout_secs", &self.idle_timeout_secs)
            .field("retry_after_secs", &self.retry_after_secs)
            .field("policy_cache_secs", &self.policy_cache_secs)
            .field("policy_max_age_secs", &self.policy_max_age_secs)
            .field("change_check_interval_ms", &self.change_check_interval_ms)
            .finish()
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "sqlite://meshpass.db".into(),
            max_connections: 8,
            min_connections: 0,
            acquire_timeout_secs: 3,
            idle_timeout_secs: 300,
            retry_after_secs: 5,
            policy_cache_secs: 2,
            policy_max_age_secs: 300,
            change_check_interval_ms: 1000,
        }
    }
}

/// Longest `store.policy_cache_secs` accepted: the cache is a load shield, not a
/// replica of the database.
pub const MAX_POLICY_CACHE_SECS: u64 = 60;

/// Longest `store.policy_max_age_secs` accepted.
pub const MAX_POLICY_MAX_AGE_SECS: u64 = 3_600;

/// The file part of a `sqlite:` store URL, its query included: `sqlite://rel.db`,
/// `sqlite:///abs.db`, and `sqlite:////abs.db` (SQLAlchemy's spelling, which keeps its
/// leading slash); `None` for any other scheme. The one reader of this form: the store
/// opens what it names, the configuration file joins it to the file's directory.
pub(crate) fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url.trim().strip_prefix("sqlite:")?;
    Some(rest.strip_prefix("//").unwrap_or(rest))
}

/// Whether a [`sqlite_path`] names an in-memory database instead of a file.
pub(crate) fn sqlite_in_memory(path: &str) -> bool {
    path.contains(":memory:") || path.contains("mode=memory")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

impl StoreConfig {
    /// The backend and the URL to connect with; a bad URL is `invalid` naming `store.url`.
    pub(super) fn backend(&self) -> Result<(Backend, String), StoreError> {
        let bad_url = |reason: &str| StoreError::Invalid {
            field: "store.url".into(),
            reason: reason.into(),
        };
        let url = self.url.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok((Backend::Postgres, url.to_string()));
        }
        if let Some(rest) = sqlite_path(url) {
            if rest.is_empty() {
                return Err(bad_url("SQLite path is empty"));
            }
            if sqlite_in_memory(rest) {
                return Err(bad_url(
                    "in-memory SQLite would lose every mapping on restart",
                ));
            }
            let sep = if rest.contains('?') { '&' } else { '?' };
            let opts = if rest.contains("mode=") {
                String::new()
            } else {
                format!("{sep}mode=rwc")
            };
            return Ok((Backend::Sqlite, format!("sqlite://{rest}{opts}")));
        }
        Err(bad_url("must start with sqlite:// or postgres://"))
    }

    /// Checks the settings without connecting; a refusal names the key
    /// ([`StoreError::Invalid`], field `store.…`).
    pub fn validate(&self) -> Result<(), StoreError> {
        let bad = |field: &str, reason: String| StoreError::Invalid {
            field: format!("store.{field}"),
            reason,
        };
        let (backend, url) = self.backend()?;
        check_driver_options(backend, &url)?;
        if self.max_connections == 0 {
            return Err(bad("max_connections", "must be at least 1".into()));
        }
        if self.min_connections > self.max_connections {
            return Err(bad(
                "min_connections",
                "must not exceed store.max_connections".into(),
            ));
        }
        let max_retry = crate::error::MAX_RETRY_AFTER_SECS;
        if !(1..=max_retry).contains(&self.retry_after_secs) {
            return Err(bad("retry_after_secs", format!("must be 1 to {max_retry}")));
        }
        if self.acquire_timeout_secs == 0 {
            return Err(bad("acquire_timeout_secs", "must be at least 1".into()));
        }
        if !(50..=60_000).contains(&self.change_check_interval_ms) {
            return Err(bad(
                "change_check_interval_ms",
                "must be 50 to 60000".into(),
            ));
        }
        if self.policy_cache_secs > MAX_POLICY_CACHE_SECS {
            return Err(bad(
                "policy_cache_secs",
                format!("must be at most {MAX_POLICY_CACHE_SECS}"),
            ));
        }
        if self.policy_max_age_secs < self.policy_cache_secs
            || self.policy_max_age_secs > MAX_POLICY_MAX_AGE_SECS
        {
            return Err(bad(
                "policy_max_age_secs",
                format!(
                    "must be from store.policy_cache_secs ({}) to {MAX_POLICY_MAX_AGE_SECS}",
                    self.policy_cache_secs
                ),
            ));
        }
        Ok(())
    }
}

/// The query parameters sqlx-postgres 0.8 reads (`options/parse.rs`).
const POSTGRES_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// Parses `url` (as [`StoreConfig::backend`] returns it) the way the pool does when it
/// connects, so what it can never connect with (a bad port or host, an unknown
/// `sslmode`) is refused now, naming `store.url`, instead of being retried as an
/// outage. Neither the URL nor a value in it is quoted: it may carry a password.
fn check_driver_options(backend: Backend, url: &str) -> Result<(), StoreError> {
    use std::str::FromStr;
    if backend == Backend::Postgres {
        // The driver logs any other parameter with its value at WARN and ignores it
        // (libpq's `sslpassword` is a secret): refused by name instead.
        let query = url.split_once('?').map_or("", |(_, q)| q);
        if let Some((key, _)) = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| !POSTGRES_PARAMETERS.contains(&k.as_ref()))
        {
            return Err(StoreError::Invalid {
                field: "store.url".into(),
                reason: format!(
                    "the PostgreSQL driver does not know the parameter {key:?} (it would be \
                     ignored); known: {}",
                    POSTGRES_PARAMETERS.join(", ")
                ),
            });
        }
    }
    let parsed = sqlx::any::AnyConnectOptions::from_str(url).and_then(|_| match backend {
        Backend::Postgres => sqlx::postgres::PgConnectOptions::from_str(url).map(|_| ()),
        Backend::Sqlite => sqlx::sqlite::SqliteConnectOptions::from_str(url).map(|_| ()),
    });
    parsed.map_err(|e| StoreError::Invalid {
        field: "store.url".into(),
        reason: format!("does not parse: {}", driver_reason(&e)),
    })
}

/// sqlx's reason for refusing a URL, without its `error with configuration:` prefix
/// and without the values it quotes (`unknown value "…" for `ssl_mode``).
fn driver_reason(e: &sqlx::Error) -> String {
    driver_reason_text(&e.to_string())
}

/// sqlx's configuration error `text` without its `error with configuration:` prefixes
/// (the drivers wrap their own) and without the `"…"`-quoted values in it.
pub(super) fn driver_reason_text(text: &str) -> String {
    let mut text = text;
    while let Some(rest) = text.strip_prefix(super::SQLX_CONFIGURATION) {
        text = rest;
    }
    let mut out = String::with_capacity(text.len());
    let mut in_quote = false;
    for c in text.chars() {
        if c == '"' {
            in_quote = !in_quote;
        } else if !in_quote {
            out.push(c);
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_database_password() {
        let c = StoreConfig {
            url: "postgres://meshpass:pa55w0rd@db:5432/meshpass".into(),
            ..StoreConfig::default()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("pa55w0rd"), "{shown}");
        assert!(shown.contains("db:5432"), "{shown}");
    }

    #[test]
    fn sqlx_configuration_errors_read_as_configuration_not_as_an_outage() {
        // As the `Any` driver reports them at connect time: wrapped twice.
        let inner = sqlx::Error::Configuration("unknown value \"pa55w0rd\" for `ssl_mode`".into());
        let outer = sqlx::Error::Configuration(Box::new(inner));
        for e in [
            StoreError::Migration(outer.to_string()),
            StoreError::Unavailable(outer.to_string()),
        ] {
            let reason = e.configuration_reason();
            assert_eq!(
                reason.as_deref(),
                Some("unknown value for `ssl_mode`"),
                "{e}"
            );
        }
        let outage = StoreError::Unavailable(sqlx::Error::PoolTimedOut.to_string());
        assert_eq!(outage.configuration_reason(), None);
        assert_eq!(
            StoreError::Config("store.url: x".into()).configuration_reason(),
            None
        );
    }

    #[test]
    fn a_url_the_driver_cannot_use_is_refused_naming_store_url_without_quoting_it() {
        for url in [
            "postgres://meshpass:pa55w0rd@db.example:99999/meshpass",
            "postgres://meshpass:pa55w0rd@[::1/meshpass",
            "postgres://meshpass:pa55w0rd@db:5432/meshpass?sslmode=pa55w0rd",
            "postgres://meshpass:pa55w0rd@db:5432/meshpass?port=pa55w0rd",
            "sqlite:///var/lib/m.db?mode=pa55w0rd",
        ] {
            let c = StoreConfig {
                url: url.into(),
                ..StoreConfig::default()
            };
            match c.validate() {
                Err(StoreError::Invalid { field, reason }) => {
                    assert_eq!(field, "store.url", "{url}: {reason}");
                    assert!(!reason.contains("pa55w0rd"), "{url}: {reason}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        for url in [
            "postgres://meshpass:pa55w0rd@db:5432/meshpass?sslmode=verify-full",
            "postgresql://meshpass@[::1]:5432/meshpass",
            "sqlite:///var/lib/m.db",
            "sqlite://m.db?mode=rw",
        ] {
            let c = StoreConfig {
                url: url.into(),
                ..StoreConfig::default()
            };
            assert!(c.validate().is_ok(), "{url}: {:?}", c.validate());
        }
    }
}
