//! An import's writes inside its write transaction: each entity kind compared with
//! what is stored, written, audited (log lines on commit), and the result checked
//! (scope rows granted, claims consistent) before the transaction may commit.

use super::*;

/// An import's writes and checks inside `c`'s transaction; what it changes.
pub(super) async fn apply_import(
    c: &mut WriteTx<'_>,
    doc: &PolicyDocument,
    prune: bool,
    actor: &Actor,
) -> Result<ImportDiff, StoreError> {
    let mut diff = ImportDiff::default();
    let before = apply_all::<Mapping>(c, &doc.mappings, prune, actor, &mut diff).await?;
    apply_all::<ScopeClaims>(c, &doc.scopes, prune, actor, &mut diff).await?;
    let after = mappings_after_import(&before, &doc.mappings, prune);
    // Rows a prune deleted are gone by now: only those the import keeps can be left
    // ungranted (the API refuses this before, from the document; here it is atomic).
    let left_rows = ScopeClaims::read_all(c).await?;
    // The document's rows against each other and the rows the store keeps, once
    // over the result (the rows it keeps are not checked against each other: this
    // import did not write them).
    let in_doc: std::collections::HashSet<ScopeKey> = doc.scopes.iter().map(Entity::key).collect();
    let mut claims = crate::store::ClaimIndex::default();
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
    let granted = crate::store::grants(&after);
    let dead: Vec<&ScopeClaims> = doc
        .scopes
        .iter()
        .filter(|r| !granted.contains(&(r.resource.as_str(), r.scope.as_str())))
        .collect();
    if !dead.is_empty() {
        return Err(import_leaves_ungranted(&dead));
    }
    Ok(diff)
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
    c: &mut WriteTx<'_>,
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
            c.audit(&change(actor, a, target(s), to_json(*s), None))
                .await?;
        }
    }
    for (w, before) in inserts {
        T::insert_for_import(c, w).await?;
        let a = format!(
            "{}.{}",
            T::KIND,
            if before.is_some() { "update" } else { "create" }
        );
        c.audit(&change(
            actor,
            a,
            target(w),
            before.and_then(to_json),
            to_json(w),
        ))
        .await?;
    }
    Ok(stored)
}
