//! The SQL backends: SQLite (embedded default, one file in WAL mode) and PostgreSQL
//! (several replicas), through sqlx's `Any` driver with per-backend migrations.
//! Queries use `$N` placeholders, which both SQLite and PostgreSQL understand.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::AnyConnection;
use sqlx::{AnyPool, Executor, Row};

pub(crate) use super::config::Backend;
pub use super::config::StoreConfig;
use super::{
    check_claim_conflicts, validate_mapping, validate_scope_claims, AuditRecord, Mapping,
    MappingStore, RateLimit, ResourcePolicy, ScopeClaims, StoreError,
};

/// The audit actor of writes seeding makes from the configuration file.
pub const SEED_ACTOR: &str = "system:config-file";

/// A [`MappingStore`] on SQLite or PostgreSQL.
#[derive(Clone)]
pub struct SqlStore {
    pub(super) pool: AnyPool,
    /// One writer at a time in this process, on both backends (store/write.rs).
    pub(super) write_lock: Arc<tokio::sync::Mutex<()>>,
    /// One key maintenance at a time in this process (store/maintenance.rs).
    pub(super) maintenance_lock: Arc<tokio::sync::Mutex<()>>,
    /// PostgreSQL: the longest a write waits for the write lock
    /// (`store.acquire_timeout_secs`), in this process's queue and for the advisory lock.
    pub(super) lock_wait: Duration,
    pub(super) backend: Backend,
    pub(super) participant_claim: String,
    /// The connection URL (the change listener opens its own connection with it).
    pub(super) url: String,
    /// Set while the configuration's migration and seeding have not completed (they
    /// retry in the background after a failed start): the store then reports itself
    /// unavailable to readiness even once the database answers.
    setup_pending: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &self.backend)
            .field("url", &crate::redact::url(&self.url))
            .field("participant_claim", &self.participant_claim)
            .finish_non_exhaustive()
    }
}

pub(super) fn unavailable(e: sqlx::Error) -> StoreError {
    match &e {
        // PostgreSQL refuses a NUL in a text parameter (22021, 22P05): bad input, never
        // an outage. No stored value holds one (writes refuse control characters), so
        // whatever was looked up by it does not exist.
        sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("22021" | "22P05")) => {
            StoreError::NotFound("a value with a NUL character".into())
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

pub(super) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Per-backend migrations: version → statements. Append only.
const SQLITE_MIGRATIONS: &[(i64, &[&str])] = &[
    (
        1,
        &[
        "CREATE TABLE mappings (name TEXT PRIMARY KEY, subject TEXT NOT NULL, resource TEXT NOT NULL, \
         participant TEXT NOT NULL, audiences TEXT NOT NULL, scopes TEXT NOT NULL, ttl_secs BIGINT NOT NULL, \
         rate_per_second REAL NOT NULL, rate_burst BIGINT NOT NULL, revision BIGINT NOT NULL, updated_at BIGINT NOT NULL, \
         UNIQUE (subject, resource))",
        "CREATE INDEX mappings_by_resource ON mappings (resource)",
        "CREATE TABLE scope_claims (resource TEXT NOT NULL, scope TEXT NOT NULL, claims TEXT NOT NULL, \
         revision BIGINT NOT NULL, updated_at BIGINT NOT NULL, PRIMARY KEY (resource, scope))",
        ],
    ),
    (
        2,
        &[
            // Who may exchange on a subject's behalf (SERVER mode) and which actors may
            // act for it; JSON lists of SPIFFE ID patterns, empty by default.
            "ALTER TABLE mappings ADD COLUMN allowed_callers TEXT NOT NULL DEFAULT '[]'",
            "ALTER TABLE mappings ADD COLUMN allowed_actors TEXT NOT NULL DEFAULT '[]'",
        ],
    ),
    (
        3,
        &["CREATE TABLE audit_log (id INTEGER PRIMARY KEY AUTOINCREMENT, at BIGINT NOT NULL, \
           request_id TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, \
           before_json TEXT NOT NULL, after_json TEXT NOT NULL, reason TEXT NOT NULL)"],
    ),
    // Revocations and their change log (issue #16): the same SQL on both backends.
    (4, super::revocations::MIGRATION_4),
    // The change counter every write bumps (replicas, store/changes.rs).
    (5, super::changes::MIGRATION),
    // Each revocation's share of a feed answer (the filters' bound, store/revocations.rs).
    (6, super::revocations::MIGRATION_6),
];

const POSTGRES_MIGRATIONS: &[(i64, &[&str])] = &[
    (
        1,
        &[
        "CREATE TABLE mappings (name TEXT PRIMARY KEY, subject TEXT NOT NULL, resource TEXT NOT NULL, \
         participant TEXT NOT NULL, audiences TEXT NOT NULL, scopes TEXT NOT NULL, ttl_secs BIGINT NOT NULL, \
         rate_per_second DOUBLE PRECISION NOT NULL, rate_burst BIGINT NOT NULL, revision BIGINT NOT NULL, updated_at BIGINT NOT NULL, \
         UNIQUE (subject, resource))",
        "CREATE INDEX mappings_by_resource ON mappings (resource)",
        "CREATE TABLE scope_claims (resource TEXT NOT NULL, scope TEXT NOT NULL, claims TEXT NOT NULL, \
         revision BIGINT NOT NULL, updated_at BIGINT NOT NULL, PRIMARY KEY (resource, scope))",
        ],
    ),
    (
        2,
        &[
            // Who may exchange on a subject's behalf (SERVER mode) and which actors may
            // act for it; JSON lists of SPIFFE ID patterns, empty by default.
            "ALTER TABLE mappings ADD COLUMN allowed_callers TEXT NOT NULL DEFAULT '[]'",
            "ALTER TABLE mappings ADD COLUMN allowed_actors TEXT NOT NULL DEFAULT '[]'",
        ],
    ),
    (
        3,
        &["CREATE TABLE audit_log (id BIGSERIAL PRIMARY KEY, at BIGINT NOT NULL, \
           request_id TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, \
           before_json TEXT NOT NULL, after_json TEXT NOT NULL, reason TEXT NOT NULL)"],
    ),
    // Revocations and their change log (issue #16): the same SQL on both backends.
    (4, super::revocations::MIGRATION_4),
    // The change counter every write bumps (replicas, store/changes.rs).
    (5, super::changes::MIGRATION),
    // Each revocation's share of a feed answer (the filters' bound, store/revocations.rs).
    (6, super::revocations::MIGRATION_6),
];

/// Applies the `migrations` newer than the database's schema inside `c`'s transaction;
/// a database a newer binary migrated is refused.
async fn apply_migrations(
    c: &mut AnyConnection,
    migrations: &[(i64, &[&str])],
) -> Result<(), StoreError> {
    let mig = |e: sqlx::Error| StoreError::Migration(e.to_string());
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS meshpass_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *c)
    .await
    .map_err(mig)?;
    let current: Option<i64> = sqlx::query("SELECT MAX(version) AS v FROM meshpass_schema")
        .fetch_one(&mut *c)
        .await
        .and_then(|r| r.try_get::<Option<i64>, _>("v"))
        .map_err(mig)?;
    let current = current.unwrap_or(0);
    // A database a newer binary migrated: its schema is not ours to guess at (a
    // rollback, or replicas of two versions). Refused, not retried.
    let latest = migrations.last().map_or(0, |(v, _)| *v);
    if current > latest {
        return Err(StoreError::Invalid {
            field: "store.url".into(),
            reason: format!(
                "the database is at schema version {current}, newer than this binary's {latest}: run a meshpass-exchange at least as new as the one that migrated it"
            ),
        });
    }
    for (version, statements) in migrations {
        if *version <= current {
            continue;
        }
        for stmt in *statements {
            sqlx::query(stmt).execute(&mut *c).await.map_err(mig)?;
        }
        sqlx::query("INSERT INTO meshpass_schema (version, applied_at) VALUES ($1, $2)")
            .bind(*version)
            .bind(now_secs())
            .execute(&mut *c)
            .await
            .map_err(mig)?;
    }
    Ok(())
}

pub(super) const MAPPING_COLUMNS: &str =
    "name, subject, resource, participant, audiences, scopes, ttl_secs, rate_per_second, rate_burst, \
     allowed_callers, allowed_actors";

/// The rows of `resource`'s mappings, by name; decoded by [`decode_mapping`] (the
/// caller chooses where: a large resource decodes off the async workers).
pub(super) async fn mapping_rows(
    c: &mut AnyConnection,
    resource: &str,
) -> Result<Vec<AnyRow>, StoreError> {
    sqlx::query(&format!(
        "SELECT {MAPPING_COLUMNS} FROM mappings WHERE resource = $1 ORDER BY name"
    ))
    .bind(resource)
    .fetch_all(&mut *c)
    .await
    .map_err(unavailable)
}

/// The rows of `resource`'s scope claims, by scope; decoded by [`decode_scope_claims`].
pub(super) async fn scope_claim_rows(
    c: &mut AnyConnection,
    resource: &str,
) -> Result<Vec<AnyRow>, StoreError> {
    sqlx::query(
        "SELECT resource, scope, claims FROM scope_claims WHERE resource = $1 ORDER BY scope",
    )
    .bind(resource)
    .fetch_all(&mut *c)
    .await
    .map_err(unavailable)
}

pub(super) fn decode_mapping(row: &AnyRow) -> Result<Mapping, StoreError> {
    let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(e.to_string());
    let name: String = row.try_get("name").map_err(|e| corrupt(&e))?;
    let audiences: String = row.try_get("audiences").map_err(|e| corrupt(&e))?;
    let scopes: String = row.try_get("scopes").map_err(|e| corrupt(&e))?;
    let callers: String = row.try_get("allowed_callers").map_err(|e| corrupt(&e))?;
    let actors: String = row.try_get("allowed_actors").map_err(|e| corrupt(&e))?;
    let ttl: i64 = row.try_get("ttl_secs").map_err(|e| corrupt(&e))?;
    // No NULLs: sqlx's Any driver mis-types a NULL bound first on PostgreSQL, so "no
    // limit" is stored as burst 0 (a real limit has burst >= 1).
    let per_second: f64 = row.try_get("rate_per_second").map_err(|e| corrupt(&e))?;
    let burst: i64 = row.try_get("rate_burst").map_err(|e| corrupt(&e))?;
    let rate_limit = if burst > 0 {
        Some(RateLimit {
            per_second,
            burst: u32::try_from(burst).map_err(|e| corrupt(&e))?,
        })
    } else {
        None
    };
    Ok(Mapping {
        subject: row.try_get("subject").map_err(|e| corrupt(&e))?,
        resource: row.try_get("resource").map_err(|e| corrupt(&e))?,
        participant: row.try_get("participant").map_err(|e| corrupt(&e))?,
        audiences: serde_json::from_str(&audiences).map_err(|e| corrupt(&e))?,
        scopes: serde_json::from_str(&scopes).map_err(|e| corrupt(&e))?,
        ttl_secs: u64::try_from(ttl).map_err(|e| corrupt(&e))?,
        rate_limit,
        allowed_callers: serde_json::from_str(&callers).map_err(|e| corrupt(&e))?,
        allowed_actors: serde_json::from_str(&actors).map_err(|e| corrupt(&e))?,
        name,
    })
}

pub(super) fn decode_scope_claims(row: &AnyRow) -> Result<ScopeClaims, StoreError> {
    let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(e.to_string());
    let claims: String = row.try_get("claims").map_err(|e| corrupt(&e))?;
    Ok(ScopeClaims {
        resource: row.try_get("resource").map_err(|e| corrupt(&e))?,
        scope: row.try_get("scope").map_err(|e| corrupt(&e))?,
        claims: serde_json::from_str(&claims).map_err(|e| corrupt(&e))?,
    })
}

fn json_text<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl SqlStore {
    /// Connects (lazily: the first query opens a connection, so a database that is down
    /// at startup makes the service not ready instead of refusing to start) and
    /// `participant_claim` is reserved in scope claims. Call [`SqlStore::migrate`] next.
    pub fn connect(config: &StoreConfig, participant_claim: &str) -> Result<Self, StoreError> {
        // A bad setting is a configuration error here, as ever (not a write's `invalid`).
        config.validate().map_err(|e| match e {
            StoreError::Invalid { field, reason } => {
                StoreError::Config(format!("{field}: {reason}"))
            }
            other => other,
        })?;
        sqlx::any::install_default_drivers();
        let (backend, url) = config.backend()?;
        let mut opts = AnyPoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(config.min_connections)
            .acquire_timeout(Duration::from_secs(config.acquire_timeout_secs))
            .idle_timeout(Some(Duration::from_secs(config.idle_timeout_secs)));
        if backend == Backend::Sqlite {
            opts = opts.after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL: readers never block the writer; busy_timeout: writers wait
                    // for each other instead of failing.
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    Ok(())
                })
            });
        }
        let pool = opts
            .connect_lazy(&url)
            .map_err(|e| StoreError::Config(format!("store.url: {e}")))?;
        Ok(SqlStore {
            pool,
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
            maintenance_lock: Arc::new(tokio::sync::Mutex::new(())),
            lock_wait: Duration::from_secs(config.acquire_timeout_secs),
            backend,
            participant_claim: participant_claim.to_string(),
            url,
            setup_pending: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        })
    }

    /// Marks migration and seeding from the configuration as not yet done (`true`) or
    /// done (`false`): meanwhile readiness and policy reads report the store unavailable.
    pub fn set_setup_pending(&self, pending: bool) {
        self.setup_pending
            .store(pending, std::sync::atomic::Ordering::Relaxed);
    }

    fn check_setup(&self) -> Result<(), StoreError> {
        if self
            .setup_pending
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(StoreError::Unavailable(
                "the configuration's migration and seeding have not completed yet".into(),
            ));
        }
        Ok(())
    }

    /// Which backend this is (`"sqlite"` or `"postgres"`).
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// Applies pending migrations in one transaction. On PostgreSQL an advisory lock
    /// makes replicas that start together apply them once.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mig = |e: sqlx::Error| StoreError::Migration(e.to_string());
        let (migrations, lock) = match self.backend {
            Backend::Sqlite => (SQLITE_MIGRATIONS, None),
            Backend::Postgres => (
                POSTGRES_MIGRATIONS,
                Some("SELECT pg_advisory_xact_lock(7270014101)"),
            ),
        };
        let mut tx = self
            .begin_holding(self.write_lock.lock().await)
            .await
            .map_err(mig)?;
        let applied = async {
            if let Some(lock) = lock {
                sqlx::query(lock).execute(&mut *tx).await.map_err(mig)?;
            }
            apply_migrations(&mut tx, migrations).await
        }
        .await;
        tx.finish(applied).await
    }

    /// Begins a read transaction that sees one state of the database throughout: a
    /// policy or an export read as two queries must not mix two commits (a scope row
    /// without the mapping that grants it, or the reverse). PostgreSQL: `REPEATABLE
    /// READ, READ ONLY`; SQLite (WAL): one read transaction on one connection sees the
    /// snapshot of its first read. Never takes the write lock.
    pub(super) async fn begin_snapshot(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        Ok(tx)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl MappingStore for SqlStore {
    async fn resource_policy(&self, resource: &str) -> Result<ResourcePolicy, StoreError> {
        // Until the configured mappings are in, an answer could refuse (4xx) what the
        // configuration grants: an outage (503) instead.
        self.check_setup()?;
        // One snapshot: a mapping and its scope rows change together.
        let mut tx = self.begin_snapshot().await?;
        let rows = mapping_rows(&mut tx, resource).await?;
        if rows.is_empty() {
            return Ok(ResourcePolicy::default());
        }
        let claim_rows = scope_claim_rows(&mut tx, resource).await?;
        tx.commit().await.map_err(unavailable)?;
        let large = rows.len() >= super::LARGE_RESOURCE;
        // Decoding and indexing a large resource is CPU work (hundreds of ms for 100,000
        // mappings): it runs off the async workers, so other exchanges go on meanwhile,
        // and the index is built here rather than by the first exchange to look.
        let build = move || {
            let mappings = rows
                .iter()
                .map(decode_mapping)
                .collect::<Result<Vec<_>, _>>()?;
            let scope_claims = claim_rows
                .iter()
                .map(decode_scope_claims)
                .collect::<Result<Vec<_>, _>>()?;
            let policy = ResourcePolicy::new(mappings, scope_claims);
            if large {
                policy.build_index();
            }
            Ok(policy)
        };
        if large {
            tokio::task::spawn_blocking(build)
                .await
                .map_err(|e| StoreError::Unavailable(format!("decoding the policy: {e}")))?
        } else {
            build()
        }
    }

    async fn list_mappings(&self) -> Result<Vec<Mapping>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {MAPPING_COLUMNS} FROM mappings ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(decode_mapping).collect()
    }

    async fn get_mapping(&self, name: &str) -> Result<Option<Mapping>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {MAPPING_COLUMNS} FROM mappings WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(decode_mapping).transpose()
    }

    async fn put_mapping(&self, m: &Mapping) -> Result<(), StoreError> {
        validate_mapping(m)?;
        let mut tx = self.begin_write().await?;
        let written = async {
            upsert_mapping(&mut tx, m, false).await?;
            super::changes::bump(&mut tx, self.backend).await
        }
        .await;
        tx.finish(written).await.map(|_| ())
    }

    async fn delete_mapping(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let deleted = async {
            let r = sqlx::query("DELETE FROM mappings WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            super::changes::bump(&mut tx, self.backend).await?;
            Ok(r.rows_affected() > 0)
        }
        .await;
        tx.finish(deleted).await
    }

    async fn audit_seeded(&self, before: &Mapping, after: &Mapping) -> Result<(), StoreError> {
        self.record_audit(&seeded_audit(before, after)).await
    }

    async fn list_scope_claims(&self) -> Result<Vec<ScopeClaims>, StoreError> {
        let rows = sqlx::query(
            "SELECT resource, scope, claims FROM scope_claims ORDER BY resource, scope",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(decode_scope_claims).collect()
    }

    async fn put_scope_claims(&self, row: &ScopeClaims) -> Result<(), StoreError> {
        validate_scope_claims(row, &self.participant_claim)?;
        let mut tx = self.begin_write().await?;
        let written = async {
            upsert_scope_claims(&mut tx, row, false).await?;
            super::changes::bump(&mut tx, self.backend).await
        }
        .await;
        tx.finish(written).await.map(|_| ())
    }

    async fn delete_scope_claims(&self, resource: &str, scope: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let deleted = async {
            let r = sqlx::query("DELETE FROM scope_claims WHERE resource = $1 AND scope = $2")
                .bind(resource)
                .bind(scope)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            super::changes::bump(&mut tx, self.backend).await?;
            Ok(r.rows_affected() > 0)
        }
        .await;
        tx.finish(deleted).await
    }

    async fn policy_version(&self) -> Result<Option<i64>, StoreError> {
        self.change_version().await.map(Some)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.check_setup()?;
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}

/// The audit record of seeding replacing the stored `before` with the file's `after`.
pub(super) fn seeded_audit(before: &Mapping, after: &Mapping) -> AuditRecord {
    AuditRecord {
        request_id: uuid::Uuid::new_v4().to_string(),
        actor: SEED_ACTOR.into(),
        action: "mapping.update".into(),
        target: format!("mappings/{}", after.name),
        before: serde_json::to_value(before).ok(),
        after: serde_json::to_value(after).ok(),
        reason: "configured in the file: the file's version is written at every start".into(),
    }
}

/// A unique-constraint violation is a conflict (a concurrent writer won); anything else
/// means the database is in trouble.
pub(super) fn write_error(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(db.message().to_string())
        }
        _ => unavailable(e),
    }
}

/// Writes `m` inside a transaction (validated by the caller): refuses a second mapping
/// of the same subject and resource; `insert_only` refuses an existing name (a
/// concurrent creator loses with a conflict instead of overwriting).
pub(super) async fn upsert_mapping(
    conn: &mut AnyConnection,
    m: &Mapping,
    insert_only: bool,
) -> Result<(), StoreError> {
    let dup = sqlx::query(
        "SELECT name FROM mappings WHERE subject = $1 AND resource = $2 AND name <> $3",
    )
    .bind(&m.subject)
    .bind(&m.resource)
    .bind(&m.name)
    .fetch_optional(&mut *conn)
    .await
    .map_err(unavailable)?;
    if let Some(row) = dup {
        let other: String = row
            .try_get("name")
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        return Err(StoreError::Conflict(format!(
            "mapping {other:?} already maps subject {:?} to resource {:?}",
            m.subject, m.resource
        )));
    }
    let (per_second, burst) = match m.rate_limit {
        Some(rl) => (rl.per_second, i64::from(rl.burst)),
        None => (0.0, 0),
    };
    let ttl = i64::try_from(m.ttl_secs).map_err(|_| super::invalid("ttl_secs", "too large"))?;
    let on_conflict = if insert_only {
        ""
    } else {
        " ON CONFLICT (name) DO UPDATE SET subject = excluded.subject, resource = excluded.resource, \
         participant = excluded.participant, audiences = excluded.audiences, scopes = excluded.scopes, \
         ttl_secs = excluded.ttl_secs, rate_per_second = excluded.rate_per_second, \
         rate_burst = excluded.rate_burst, revision = mappings.revision + 1, updated_at = excluded.updated_at, \
         allowed_callers = excluded.allowed_callers, allowed_actors = excluded.allowed_actors"
    };
    sqlx::query(&format!(
        "INSERT INTO mappings (name, subject, resource, participant, audiences, scopes, ttl_secs, \
         rate_per_second, rate_burst, revision, updated_at, allowed_callers, allowed_actors) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10, $11, $12){on_conflict}"
    ))
    .bind(&m.name)
    .bind(&m.subject)
    .bind(&m.resource)
    .bind(&m.participant)
    .bind(json_text(&m.audiences)?)
    .bind(json_text(&m.scopes)?)
    .bind(ttl)
    .bind(per_second)
    .bind(burst)
    .bind(now_secs())
    .bind(json_text(&m.allowed_callers)?)
    .bind(json_text(&m.allowed_actors)?)
    .execute(&mut *conn)
    .await
    .map_err(write_error)?;
    Ok(())
}

/// The advisory lock key every write transaction takes first on PostgreSQL
/// ([`SqlStore::begin_write`], store/write.rs). (Migrations use 7270014101, key maintenance 7270014102.)
pub(super) const WRITE_LOCK: i64 = 7_270_014_103;

/// Writes `row` inside a transaction (validated by the caller) after checking its claims
/// against the other scopes of its resource; `insert_only` refuses an existing row.
pub(super) async fn upsert_scope_claims(
    conn: &mut AnyConnection,
    row: &ScopeClaims,
    insert_only: bool,
) -> Result<(), StoreError> {
    let others =
        sqlx::query("SELECT resource, scope, claims FROM scope_claims WHERE resource = $1")
            .bind(&row.resource)
            .fetch_all(&mut *conn)
            .await
            .map_err(unavailable)?
            .iter()
            .map(decode_scope_claims)
            .collect::<Result<Vec<_>, _>>()?;
    check_claim_conflicts(row, &others)?;
    write_scope_claims(conn, row, insert_only).await
}

/// Writes `row` without checking its claims against its siblings': for a caller that
/// checks every row of the result at once (an import).
pub(super) async fn write_scope_claims(
    conn: &mut AnyConnection,
    row: &ScopeClaims,
    insert_only: bool,
) -> Result<(), StoreError> {
    let on_conflict = if insert_only {
        ""
    } else {
        " ON CONFLICT (resource, scope) DO UPDATE SET claims = excluded.claims, \
         revision = scope_claims.revision + 1, updated_at = excluded.updated_at"
    };
    sqlx::query(&format!(
        "INSERT INTO scope_claims (resource, scope, claims, revision, updated_at) VALUES ($1, $2, $3, 1, $4){on_conflict}"
    ))
    .bind(&row.resource)
    .bind(&row.scope)
    .bind(json_text(&row.claims)?)
    .bind(now_secs())
    .execute(&mut *conn)
    .await
    .map_err(write_error)?;
    Ok(())
}
