//! Management operations on [`SqlStore`]: reads with entity tags, conditional writes,
//! the audit log, export, and the all-or-nothing import.
//!
//! Every change and its audit event commit in one transaction, so the log never shows a
//! change that did not happen (or misses one that did). Conditional writes are atomic
//! on both backends: the writer first bumps the row's `revision` where it still has the
//! revision it read (`UPDATE ... WHERE revision = $n`), which on PostgreSQL takes the
//! row lock: of two writers holding the same entity tag exactly one succeeds, the other
//! sees the bumped revision and gets [`StoreError::PreconditionFailed`].

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::AnyConnection;
use sqlx::Row;

use super::etag::{parse_if_match, ETag};
use super::sql::{
    decode_mapping, decode_scope_claims, mapping_rows, scope_claim_rows, unavailable,
    upsert_mapping, upsert_scope_claims, write_error, write_scope_claims, MAPPING_COLUMNS,
};
use super::write::WriteTx;
use super::{
    check_scope_granted, rows_left_ungranted, scope_row_names, validate_mapping,
    validate_scope_claims, AuditRecord, Mapping, ScopeClaims, SqlStore, StoreError,
};

/// What a write expects to find. Unmet, a write fails with
/// [`StoreError::PreconditionFailed`] (412), also when the entity does not exist and
/// `If-Match` asked for one (RFC 9110 §13.1.1); a delete then fails with
/// [`StoreError::NotFound`]: without the condition it would not succeed either (§13.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// Nothing: create or replace.
    None,
    /// The entity must not exist (create: 409 when it does).
    Absent,
    /// The entity must not exist, as `If-None-Match: *` asks: 412 when it does (RFC
    /// 9110 §13.1.2).
    NoneMatch,
    /// The entity must exist (`If-Match: *`).
    Exists,
    /// The entity must exist with this tag.
    Matches(ETag),
    /// The entity must exist with one of these tags (an `If-Match` list; empty when it
    /// named only weak or foreign tags: then no state matches).
    MatchesAny(Vec<ETag>),
}

impl Precondition {
    /// The precondition of an `If-Match` value (its field lines joined with commas); the
    /// error says why the value is malformed (400).
    pub fn if_match(value: &[u8]) -> Result<Precondition, String> {
        match parse_if_match(value) {
            Ok(None) => Ok(Precondition::Exists),
            Ok(Some(tags)) => Ok(Precondition::MatchesAny(tags)),
            Err(e) => Err(format!("malformed If-Match: {e}")),
        }
    }
}

/// Who makes a change, for the audit log.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The caller's identity (SPIFFE ID).
    pub who: String,
    /// The request id (`X-Request-Id`).
    pub request_id: String,
}

/// An entity after a write.
#[derive(Debug, Clone)]
pub struct Saved<T> {
    /// The stored entity.
    pub item: T,
    /// Its tag.
    pub etag: ETag,
    /// Whether it was created (else replaced).
    pub created: bool,
}

/// Every mapping and scope, as exported and imported (stable order: by name, and by
/// resource then scope).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// Mappings.
    #[serde(default)]
    pub mappings: Vec<Mapping>,
    /// Scope → claims rows.
    #[serde(default)]
    pub scopes: Vec<ScopeClaims>,
}

/// What an import changes (or would change, in a dry run).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImportDiff {
    /// Targets created (`mappings/NAME`, `scopes/RESOURCE/SCOPE`).
    pub added: Vec<String>,
    /// Targets replaced.
    pub changed: Vec<String>,
    /// Targets deleted (with `prune`), or that `prune` would delete.
    pub removed: Vec<String>,
    /// Entries identical to the stored ones.
    pub unchanged: usize,
    /// Whether the changes were committed (false: dry run, or nothing to do).
    pub applied: bool,
}

/// The key of a scope row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScopeKey {
    /// The resource.
    pub resource: String,
    /// The scope.
    pub scope: String,
}

/// A stored entity kind the generic write path handles.
#[async_trait]
trait Entity: Serialize + Clone + PartialEq + Send + Sync + Sized {
    /// Entries are matched by key, never by [`Entity::target`]: a resource and a scope
    /// may both hold `/`, so rows (`a`, `b/c`) and (`a/b`, `c`) share one target string.
    type Key: Send + Sync + Eq + std::hash::Hash;
    const KIND: &'static str;
    fn key(&self) -> Self::Key;
    fn target(key: &Self::Key) -> String;
    fn validate(&self, store: &SqlStore) -> Result<(), StoreError>;
    async fn read(
        c: &mut AnyConnection,
        key: &Self::Key,
    ) -> Result<Option<(Self, i64)>, StoreError>;
    /// Bumps the revision if it is still `revision`; whether it was.
    async fn claim(
        c: &mut AnyConnection,
        key: &Self::Key,
        revision: i64,
    ) -> Result<bool, StoreError>;
    async fn upsert(
        c: &mut AnyConnection,
        item: &Self,
        insert_only: bool,
    ) -> Result<(), StoreError>;
    /// Inserts `item` for an import, which checks the whole result after its inserts.
    async fn insert_for_import(c: &mut AnyConnection, item: &Self) -> Result<(), StoreError> {
        Self::upsert(c, item, true).await
    }
    async fn delete(c: &mut AnyConnection, key: &Self::Key) -> Result<bool, StoreError>;
    /// Every stored entity of the kind, in export order.
    async fn read_all(c: &mut AnyConnection) -> Result<Vec<Self>, StoreError>;
    /// Refuses, inside the write's transaction and after it, a change from `before` to
    /// `after` that leaves a scope row granted by no mapping: a scope row is never dead
    /// configuration (it would make the export fail to import), and with one writer at
    /// a time no concurrent write slips between this check and the commit.
    async fn check_grants(
        c: &mut AnyConnection,
        before: Option<&Self>,
        after: Option<&Self>,
    ) -> Result<(), StoreError>;
}

#[async_trait]
impl Entity for Mapping {
    type Key = String;
    const KIND: &'static str = "mapping";
    fn key(&self) -> String {
        self.name.clone()
    }
    fn target(key: &String) -> String {
        format!("mappings/{key}")
    }
    fn validate(&self, _: &SqlStore) -> Result<(), StoreError> {
        validate_mapping(self)
    }
    async fn read(c: &mut AnyConnection, key: &String) -> Result<Option<(Self, i64)>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {MAPPING_COLUMNS}, revision FROM mappings WHERE name = $1"
        ))
        .bind(key)
        .fetch_optional(&mut *c)
        .await
        .map_err(unavailable)?;
        row.map(|r| Ok((decode_mapping(&r)?, revision(&r)?)))
            .transpose()
    }
    async fn claim(c: &mut AnyConnection, key: &String, rev: i64) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE mappings SET revision = revision + 1 WHERE name = $1 AND revision = $2",
        )
        .bind(key)
        .bind(rev)
        .execute(&mut *c)
        .await
        .map_err(write_error)?;
        Ok(r.rows_affected() == 1)
    }
    async fn upsert(
        c: &mut AnyConnection,
        item: &Self,
        insert_only: bool,
    ) -> Result<(), StoreError> {
        upsert_mapping(c, item, insert_only).await
    }
    async fn delete(c: &mut AnyConnection, key: &String) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM mappings WHERE name = $1")
            .bind(key)
            .execute(&mut *c)
            .await
            .map_err(write_error)?;
        Ok(r.rows_affected() > 0)
    }
    async fn read_all(c: &mut AnyConnection) -> Result<Vec<Self>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {MAPPING_COLUMNS} FROM mappings ORDER BY name"
        ))
        .fetch_all(&mut *c)
        .await
        .map_err(unavailable)?;
        rows.iter().map(decode_mapping).collect()
    }
    async fn check_grants(
        c: &mut AnyConnection,
        before: Option<&Self>,
        after: Option<&Self>,
    ) -> Result<(), StoreError> {
        // Only the scopes the old state granted and the new one does not can be lost;
        // most writes lose none and read nothing more.
        let Some(old) = before else { return Ok(()) };
        let kept =
            |s: &String| after.is_some_and(|n| n.resource == old.resource && n.scopes.contains(s));
        if old.scopes.iter().all(kept) {
            return Ok(());
        }
        let rows = scope_claim_rows(c, &old.resource)
            .await?
            .iter()
            .map(decode_scope_claims)
            .collect::<Result<Vec<_>, _>>()?;
        if !rows
            .iter()
            .any(|r| old.scopes.contains(&r.scope) && !kept(&r.scope))
        {
            return Ok(());
        }
        let now = mappings_of(c, &old.resource).await?;
        let left = rows_left_ungranted(&rows, std::slice::from_ref(old), &now);
        if left.is_empty() {
            return Ok(());
        }
        let verb = if left.len() == 1 { "is" } else { "are" };
        Err(StoreError::Conflict(format!(
            "{} {verb} granted only by this mapping ({}): delete them first, or grant their scopes in another mapping of resource {:?}",
            scope_row_names(&left),
            old.name,
            old.resource
        )))
    }
}

/// The mappings of `resource`, in a transaction.
async fn mappings_of(c: &mut AnyConnection, resource: &str) -> Result<Vec<Mapping>, StoreError> {
    mapping_rows(c, resource)
        .await?
        .iter()
        .map(decode_mapping)
        .collect()
}

#[async_trait]
impl Entity for ScopeClaims {
    type Key = ScopeKey;
    const KIND: &'static str = "scope";
    fn key(&self) -> ScopeKey {
        ScopeKey {
            resource: self.resource.clone(),
            scope: self.scope.clone(),
        }
    }
    fn target(key: &ScopeKey) -> String {
        format!("scopes/{}/{}", key.resource, key.scope)
    }
    fn validate(&self, store: &SqlStore) -> Result<(), StoreError> {
        validate_scope_claims(self, &store.participant_claim)
    }
    async fn read(
        c: &mut AnyConnection,
        key: &ScopeKey,
    ) -> Result<Option<(Self, i64)>, StoreError> {
        let row = sqlx::query(
            "SELECT resource, scope, claims, revision FROM scope_claims WHERE resource = $1 AND scope = $2",
        )
        .bind(&key.resource)
        .bind(&key.scope)
        .fetch_optional(&mut *c)
        .await
        .map_err(unavailable)?;
        row.map(|r| Ok((decode_scope_claims(&r)?, revision(&r)?)))
            .transpose()
    }
    async fn claim(c: &mut AnyConnection, key: &ScopeKey, rev: i64) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE scope_claims SET revision = revision + 1 WHERE resource = $1 AND scope = $2 AND revision = $3",
        )
        .bind(&key.resource)
        .bind(&key.scope)
        .bind(rev)
        .execute(&mut *c)
        .await
        .map_err(write_error)?;
        Ok(r.rows_affected() == 1)
    }
    async fn upsert(
        c: &mut AnyConnection,
        item: &Self,
        insert_only: bool,
    ) -> Result<(), StoreError> {
        upsert_scope_claims(c, item, insert_only).await
    }
    /// Without the per-row read of its siblings (quadratic over a resource's rows):
    /// `import` checks every row of the result at once ([`super::ClaimIndex`]).
    async fn insert_for_import(c: &mut AnyConnection, item: &Self) -> Result<(), StoreError> {
        write_scope_claims(c, item, true).await
    }
    async fn delete(c: &mut AnyConnection, key: &ScopeKey) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM scope_claims WHERE resource = $1 AND scope = $2")
            .bind(&key.resource)
            .bind(&key.scope)
            .execute(&mut *c)
            .await
            .map_err(write_error)?;
        Ok(r.rows_affected() > 0)
    }
    async fn read_all(c: &mut AnyConnection) -> Result<Vec<Self>, StoreError> {
        let rows = sqlx::query(
            "SELECT resource, scope, claims FROM scope_claims ORDER BY resource, scope",
        )
        .fetch_all(&mut *c)
        .await
        .map_err(unavailable)?;
        rows.iter().map(decode_scope_claims).collect()
    }
    async fn check_grants(
        c: &mut AnyConnection,
        _: Option<&Self>,
        after: Option<&Self>,
    ) -> Result<(), StoreError> {
        // The API checked this before the write; here a mapping change that committed
        // in between cannot make the row dead.
        match after {
            Some(row) => check_scope_granted(row, &mappings_of(c, &row.resource).await?),
            None => Ok(()),
        }
    }
}

fn revision(row: &sqlx::any::AnyRow) -> Result<i64, StoreError> {
    row.try_get("revision")
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn to_json<T: Serialize>(v: &T) -> Option<Value> {
    serde_json::to_value(v).ok()
}

fn change(
    actor: &Actor,
    action: String,
    target: String,
    before: Option<Value>,
    after: Option<Value>,
) -> AuditRecord {
    AuditRecord {
        request_id: actor.request_id.clone(),
        actor: actor.who.clone(),
        action,
        target,
        before,
        after,
        reason: String::new(),
    }
}

/// Checks `pre` against the stored state (`current`), claiming the row when it exists;
/// `missing` is the error when `pre` needs an entity and there is none.
async fn check_precondition<T: Entity>(
    c: &mut AnyConnection,
    key: &T::Key,
    current: Option<&(T, i64)>,
    pre: &Precondition,
    missing: fn(String) -> StoreError,
) -> Result<(), StoreError> {
    let target = T::target(key);
    match (pre, current) {
        (Precondition::Absent, Some(_)) => {
            return Err(StoreError::Conflict(format!("{target} already exists")))
        }
        (Precondition::NoneMatch, Some(_)) => return Err(StoreError::PreconditionFailed(target)),
        (Precondition::Exists | Precondition::Matches(_) | Precondition::MatchesAny(_), None) => {
            return Err(missing(target))
        }
        (Precondition::Matches(tag), Some((item, _))) if ETag::of(item) != *tag => {
            return Err(StoreError::PreconditionFailed(target))
        }
        (Precondition::MatchesAny(tags), Some((item, _))) if !tags.contains(&ETag::of(item)) => {
            return Err(StoreError::PreconditionFailed(target))
        }
        _ => {}
    }
    if let Some((_, rev)) = current {
        if !T::claim(c, key, *rev).await? {
            // Another writer changed it since we read it.
            return Err(StoreError::PreconditionFailed(target));
        }
    }
    Ok(())
}

mod import;
use import::apply_import;
pub use import::{import_leaves_ungranted, mappings_after_import};

impl SqlStore {
    async fn tagged<T: Entity>(&self, key: &T::Key) -> Result<Option<(T, ETag)>, StoreError> {
        let mut c = self.pool.acquire().await.map_err(unavailable)?;
        Ok(T::read(&mut c, key).await?.map(|(item, _)| {
            let tag = ETag::of(&item);
            (item, tag)
        }))
    }

    async fn save<T: Entity>(
        &self,
        item: &T,
        pre: Precondition,
        actor: &Actor,
    ) -> Result<Saved<T>, StoreError> {
        item.validate(self)?;
        let key = item.key();
        let mut tx = self.begin_write().await?;
        let saved = async {
            let current = T::read(&mut tx, &key).await?;
            let missing = StoreError::PreconditionFailed;
            check_precondition::<T>(&mut tx, &key, current.as_ref(), &pre, missing).await?;
            let created = current.is_none();
            T::upsert(&mut tx, item, created).await?;
            T::check_grants(&mut tx, current.as_ref().map(|(c, _)| c), Some(item)).await?;
            let action = format!("{}.{}", T::KIND, if created { "create" } else { "update" });
            let before = current.as_ref().and_then(|(c, _)| to_json(c));
            tx.audit(&change(
                actor,
                action,
                T::target(&key),
                before,
                to_json(item),
            ))
            .await?;
            super::changes::bump(&mut tx, self.backend).await?;
            Ok(created)
        }
        .await;
        let created = tx.finish(saved).await?;
        Ok(Saved {
            etag: ETag::of(item),
            item: item.clone(),
            created,
        })
    }

    async fn remove<T: Entity>(
        &self,
        key: &T::Key,
        pre: Precondition,
        actor: &Actor,
    ) -> Result<T, StoreError> {
        let mut tx = self.begin_write().await?;
        let removed = async {
            let current = T::read(&mut tx, key).await?;
            let pre = if pre == Precondition::None {
                Precondition::Exists
            } else {
                pre
            };
            let missing = StoreError::NotFound;
            check_precondition::<T>(&mut tx, key, current.as_ref(), &pre, missing).await?;
            let Some((old, _)) = current else {
                return Err(StoreError::NotFound(T::target(key)));
            };
            T::delete(&mut tx, key).await?;
            T::check_grants(&mut tx, Some(&old), None).await?;
            let action = format!("{}.delete", T::KIND);
            tx.audit(&change(actor, action, T::target(key), to_json(&old), None))
                .await?;
            super::changes::bump(&mut tx, self.backend).await?;
            Ok(old)
        }
        .await;
        tx.finish(removed).await
    }

    /// A mapping and its tag.
    pub async fn mapping_tagged(&self, name: &str) -> Result<Option<(Mapping, ETag)>, StoreError> {
        self.tagged::<Mapping>(&name.to_string()).await
    }

    /// A scope row and its tag.
    pub async fn scope_tagged(
        &self,
        key: &ScopeKey,
    ) -> Result<Option<(ScopeClaims, ETag)>, StoreError> {
        self.tagged::<ScopeClaims>(key).await
    }

    /// Writes a mapping under `pre`, audited in the same transaction.
    pub async fn save_mapping(
        &self,
        m: &Mapping,
        pre: Precondition,
        actor: &Actor,
    ) -> Result<Saved<Mapping>, StoreError> {
        self.save(m, pre, actor).await
    }

    /// Deletes a mapping under `pre` (at least: it exists); returns what was deleted.
    pub async fn remove_mapping(
        &self,
        name: &str,
        pre: Precondition,
        actor: &Actor,
    ) -> Result<Mapping, StoreError> {
        self.remove::<Mapping>(&name.to_string(), pre, actor).await
    }

    /// Writes a scope row under `pre`, audited in the same transaction.
    pub async fn save_scope(
        &self,
        row: &ScopeClaims,
        pre: Precondition,
        actor: &Actor,
    ) -> Result<Saved<ScopeClaims>, StoreError> {
        self.save(row, pre, actor).await
    }

    /// Deletes a scope row under `pre` (at least: it exists); returns what was deleted.
    pub async fn remove_scope(
        &self,
        key: &ScopeKey,
        pre: Precondition,
        actor: &Actor,
    ) -> Result<ScopeClaims, StoreError> {
        self.remove::<ScopeClaims>(key, pre, actor).await
    }

    /// Every mapping and scope row, in stable order.
    pub async fn export(&self) -> Result<PolicyDocument, StoreError> {
        // One snapshot: an export taken during a write is one state the store was in
        // (two reads could give a scope row without its mapping: not importable).
        let mut tx = self.begin_snapshot().await?;
        let PolicyDocument {
            mut mappings,
            mut scopes,
        } = read_all(&mut tx).await?;
        tx.commit().await.map_err(unavailable)?;
        // Byte order, as the list pages: a PostgreSQL database with a linguistic
        // collation would otherwise export another order than SQLite.
        mappings.sort_by(|a, b| a.name.cmp(&b.name));
        scopes.sort_by(|a, b| (&a.resource, &a.scope).cmp(&(&b.resource, &b.scope)));
        Ok(PolicyDocument { mappings, scopes })
    }

    /// Makes the store hold `doc`: adds and replaces its entries, and with `prune`
    /// deletes stored entries it lacks. All or nothing, in one transaction; a dry run
    /// performs the same writes and rolls them back, so it fails exactly when the real
    /// import would. Entries are validated by the caller's rules first (the store's own
    /// run again inside).
    pub async fn import(
        &self,
        doc: &PolicyDocument,
        prune: bool,
        dry_run: bool,
        actor: &Actor,
    ) -> Result<ImportDiff, StoreError> {
        for m in &doc.mappings {
            m.validate(self)?;
        }
        for s in &doc.scopes {
            s.validate(self)?;
        }
        let mut tx = self.begin_write().await?;
        let checked = apply_import(&mut tx, doc, prune, actor).await;
        let diff = match checked {
            Ok(diff) => diff,
            Err(e) => return Err(tx.abort(e).await),
        };
        let nothing =
            diff.added.is_empty() && diff.changed.is_empty() && (diff.removed.is_empty() || !prune);
        if dry_run || nothing {
            tx.rollback().await?;
            return Ok(diff);
        }
        let bumped = super::changes::bump(&mut tx, self.backend).await;
        tx.finish(bumped).await?;
        Ok(ImportDiff {
            applied: true,
            ..diff
        })
    }
}

/// Every mapping and scope row, inside `c`'s transaction (in the database's order).
pub(super) async fn read_all(c: &mut AnyConnection) -> Result<PolicyDocument, StoreError> {
    Ok(PolicyDocument {
        mappings: Mapping::read_all(c).await?,
        scopes: ScopeClaims::read_all(c).await?,
    })
}
