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

use super::audit::insert_audit;
use super::etag::{parse_if_match, ETag};
use super::sql::{
    decode_mapping, decode_scope_claims, mapping_rows, scope_claim_rows, unavailable,
    upsert_mapping, upsert_scope_claims, write_error, write_scope_claims, MAPPING_COLUMNS,
};
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
        let (_w, mut tx) = self.begin_write().await?;
        let current = T::read(&mut tx, &key).await?;
        let missing = StoreError::PreconditionFailed;
        check_precondition::<T>(&mut tx, &key, current.as_ref(), &pre, missing).await?;
        let created = current.is_none();
        T::upsert(&mut tx, item, created).await?;
        T::check_grants(&mut tx, current.as_ref().map(|(c, _)| c), Some(item)).await?;
        let action = format!("{}.{}", T::KIND, if created { "create" } else { "update" });
        let before = current.as_ref().and_then(|(c, _)| to_json(c));
        insert_audit(
            &mut tx,
            &change(actor, action, T::target(&key), before, to_json(item)),
        )
        .await?;
        super::changes::bump(&mut tx, self.backend).await?;
        tx.commit().await.map_err(write_error)?;
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
        let (_w, mut tx) = self.begin_write().await?;
        let current = T::read(&mut tx, key).await?;
        let pre = if pre == Precondition::None {
            Precondition::Exists
        } else {
            pre
        };
        check_precondition::<T>(&mut tx, key, current.as_ref(), &pre, StoreError::NotFound).await?;
        let Some((old, _)) = current else {
            return Err(StoreError::NotFound(T::target(key)));
        };
        T::delete(&mut tx, key).await?;
        T::check_grants(&mut tx, Some(&old), None).await?;
        let action = format!("{}.delete", T::KIND);
        insert_audit(
            &mut tx,
            &change(actor, action, T::target(key), to_json(&old), None),
        )
        .await?;
        super::changes::bump(&mut tx, self.backend).await?;
        tx.commit().await.map_err(write_error)?;
        Ok(old)
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
        let mut mappings = Mapping::read_all(&mut tx).await?;
        let mut scopes = ScopeClaims::read_all(&mut tx).await?;
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
        let (_w, mut tx) = self.begin_write().await?;
        let mut diff = ImportDiff::default();
        let before = apply_all::<Mapping>(&mut tx, &doc.mappings, prune, actor, &mut diff).await?;
        apply_all::<ScopeClaims>(&mut tx, &doc.scopes, prune, actor, &mut diff).await?;
        let after = mappings_after_import(&before, &doc.mappings, prune);
        // Rows a prune deleted are gone by now: only those the import keeps can be left
        // ungranted (the API refuses this before, from the document; here it is atomic).
        let left_rows = ScopeClaims::read_all(&mut tx).await?;
        // The document's rows against each other and the rows the store keeps, once
        // over the result (the rows it keeps are not checked against each other: this
        // import did not write them).
        let in_doc: std::collections::HashSet<ScopeKey> =
            doc.scopes.iter().map(Entity::key).collect();
        let mut claims = super::ClaimIndex::default();
        for row in left_rows.iter().filter(|r| !in_doc.contains(&r.key())) {
            claims.note(row);
        }
        for row in &doc.scopes {
            claims.add(row)?;
        }
        let left = rows_left_ungranted(&left_rows, &before, &after);
        if !left.is_empty() {
            return Err(import_leaves_ungranted(&left));
        }
        // The document's own rows too: the API checked them against a snapshot read
        // before this transaction, and a mapping write may have committed since.
        let granted = super::grants(&after);
        let dead: Vec<&ScopeClaims> = doc
            .scopes
            .iter()
            .filter(|r| !granted.contains(&(r.resource.as_str(), r.scope.as_str())))
            .collect();
        if !dead.is_empty() {
            return Err(import_leaves_ungranted(&dead));
        }
        let nothing =
            diff.added.is_empty() && diff.changed.is_empty() && (diff.removed.is_empty() || !prune);
        if dry_run || nothing {
            tx.rollback().await.map_err(unavailable)?;
        } else {
            super::changes::bump(&mut tx, self.backend).await?;
            tx.commit().await.map_err(write_error)?;
            diff.applied = true;
        }
        Ok(diff)
    }
}

/// The mappings a store holds after importing `wanted` over `stored`.
pub fn mappings_after_import(stored: &[Mapping], wanted: &[Mapping], prune: bool) -> Vec<Mapping> {
    let mut after = wanted.to_vec();
    if !prune {
        let named: std::collections::HashSet<&str> =
            wanted.iter().map(|w| w.name.as_str()).collect();
        let kept = stored.iter().filter(|s| !named.contains(s.name.as_str()));
        after.extend(kept.cloned());
    }
    after
}

/// The refusal of an import that would leave the stored scope rows `left` granted by no
/// mapping (409: the document conflicts with what the store holds).
pub fn import_leaves_ungranted(left: &[&ScopeClaims]) -> StoreError {
    StoreError::Conflict(format!(
        "{} would be granted by no mapping after this import: keep a mapping that grants them, delete them first, or import with prune=true (which deletes what the document lacks)",
        scope_row_names(left)
    ))
}

/// Applies one kind of a document: removed (with prune) and changed entries are deleted
/// first, then changed and added ones inserted, so swaps between entries (a subject
/// moving from one mapping to another, a claim moving between scopes) do not trip the
/// per-row checks on a half-written state. Returns what was stored before.
async fn apply_all<T: Entity>(
    c: &mut AnyConnection,
    wanted: &[T],
    prune: bool,
    actor: &Actor,
    diff: &mut ImportDiff,
) -> Result<Vec<T>, StoreError> {
    let stored: Vec<T> = T::read_all(c).await?;
    let target = |x: &T| T::target(&x.key());
    // By key, once each: matching is linear in the document and the store (it runs
    // holding the write lock every replica waits on).
    let mut by_key: std::collections::HashMap<T::Key, &T> =
        std::collections::HashMap::with_capacity(wanted.len());
    for w in wanted {
        if by_key.insert(w.key(), w).is_some() {
            return Err(StoreError::Invalid {
                field: format!("{}s", T::KIND),
                reason: format!("{} is listed twice", target(w)),
            });
        }
    }
    let mut deletes: Vec<(&T, &'static str)> = Vec::new();
    let mut inserts: Vec<(&T, Option<&T>)> = Vec::new();
    let mut kept = std::collections::HashSet::with_capacity(stored.len());
    for s in &stored {
        let t = target(s);
        let k = s.key();
        match by_key.get(&k) {
            None => {
                diff.removed.push(t);
                if prune {
                    deletes.push((s, "delete"));
                }
            }
            Some(w) => {
                if *w == s {
                    diff.unchanged += 1;
                } else {
                    diff.changed.push(t);
                    deletes.push((s, ""));
                    inserts.push((w, Some(s)));
                }
                kept.insert(k);
            }
        }
    }
    for w in wanted {
        if !kept.contains(&w.key()) {
            diff.added.push(target(w));
            inserts.push((w, None));
        }
    }
    for (s, action) in &deletes {
        T::delete(c, &s.key()).await?;
        if !action.is_empty() {
            let a = format!("{}.delete", T::KIND);
            insert_audit(c, &change(actor, a, target(s), to_json(*s), None)).await?;
        }
    }
    for (w, before) in inserts {
        T::insert_for_import(c, w).await?;
        let a = format!(
            "{}.{}",
            T::KIND,
            if before.is_some() { "update" } else { "create" }
        );
        insert_audit(
            c,
            &change(actor, a, target(w), before.and_then(to_json), to_json(w)),
        )
        .await?;
    }
    Ok(stored)
}
