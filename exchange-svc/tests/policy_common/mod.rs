//! The policy cache tests' shared parts: mappings, real stores, and a store wrapper
//! that counts (and can hold or gate) the reads the cache makes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use meshpass_exchange::store::{
    Mapping, MappingStore, PolicyCache, SqlStore, StoreConfig, StoreError,
};

pub fn mapping(name: &str, resource: &str, participant: &str) -> Mapping {
    Mapping {
        name: name.into(),
        subject: "spiffe://cluster.local/ns/shop/*".into(),
        resource: resource.into(),
        participant: participant.into(),
        audiences: Vec::new(),
        scopes: vec!["read".into()],
        ttl_secs: 300,
        rate_limit: None,
        allowed_callers: Vec::new(),
        allowed_actors: Vec::new(),
    }
}

pub async fn open(url: &str) -> Arc<SqlStore> {
    let cfg = StoreConfig {
        url: url.into(),
        max_connections: 2,
        ..StoreConfig::default()
    };
    let s = Arc::new(SqlStore::connect(&cfg, "participant").unwrap());
    s.migrate().await.unwrap();
    s
}

pub fn participant(p: &meshpass_exchange::store::ResourcePolicy) -> &str {
    assert_eq!(p.mappings.len(), 1, "{p:?}");
    &p.mappings[0].participant
}

/// The real store, counting its `resource_policy` reads and holding each one for a
/// while so that concurrent exchanges certainly overlap it; with a gate, each read
/// first waits for a permit that the test hands out.
pub struct CountingStore {
    pub inner: Arc<SqlStore>,
    pub reads: std::sync::atomic::AtomicUsize,
    hold: std::time::Duration,
    pub gate: Option<tokio::sync::Semaphore>,
    pub started: std::sync::atomic::AtomicUsize,
    /// Whether the store's change version is passed through (the cache then checks
    /// it instead of reading again), and how many times it was read.
    pub versioned: bool,
    pub version_reads: std::sync::atomic::AtomicUsize,
}

impl CountingStore {
    pub fn new(inner: Arc<SqlStore>, hold_ms: u64) -> Self {
        CountingStore {
            inner,
            reads: 0.into(),
            hold: std::time::Duration::from_millis(hold_ms),
            gate: None,
            started: 0.into(),
            versioned: false,
            version_reads: 0.into(),
        }
    }
}

#[async_trait::async_trait]
impl MappingStore for CountingStore {
    async fn resource_policy(
        &self,
        resource: &str,
    ) -> Result<meshpass_exchange::store::ResourcePolicy, StoreError> {
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        let p = self.inner.resource_policy(resource).await;
        // Counted once the database has answered.
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(self.hold).await;
        p
    }
    async fn list_mappings(&self) -> Result<Vec<Mapping>, StoreError> {
        self.inner.list_mappings().await
    }
    async fn get_mapping(&self, name: &str) -> Result<Option<Mapping>, StoreError> {
        self.inner.get_mapping(name).await
    }
    async fn put_mapping(&self, mapping: &Mapping) -> Result<(), StoreError> {
        self.inner.put_mapping(mapping).await
    }
    async fn delete_mapping(&self, name: &str) -> Result<bool, StoreError> {
        self.inner.delete_mapping(name).await
    }
    async fn list_scope_claims(
        &self,
    ) -> Result<Vec<meshpass_exchange::store::ScopeClaims>, StoreError> {
        self.inner.list_scope_claims().await
    }
    async fn put_scope_claims(
        &self,
        row: &meshpass_exchange::store::ScopeClaims,
    ) -> Result<(), StoreError> {
        self.inner.put_scope_claims(row).await
    }
    async fn delete_scope_claims(&self, resource: &str, scope: &str) -> Result<bool, StoreError> {
        self.inner.delete_scope_claims(resource, scope).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn policy_version(&self) -> Result<Option<i64>, StoreError> {
        if !self.versioned {
            return Ok(None);
        }
        self.version_reads
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.policy_version().await
    }
}

pub fn reads(s: &CountingStore) -> usize {
    s.reads.load(std::sync::atomic::Ordering::SeqCst)
}

/// Polls `f` until it holds (a generous bound, so a busy machine cannot fail it).
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..6_000 {
        if f() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("not within 30 s: {what}");
}

/// The policy of "payments", bounded so that a read wrongly waited for (its gate shut)
/// fails the test instead of hanging it.
pub async fn within(c: Arc<PolicyCache>) -> Arc<meshpass_exchange::store::ResourcePolicy> {
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        c.shared_resource_policy("payments"),
    )
    .await
    .expect("answered without waiting for the store")
    .unwrap()
}
