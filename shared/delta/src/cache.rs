//! Open tables kept across warm invocations: each is brought up to date with the log entries committed since,
//! instead of being loaded again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use deltalake::logstore::ObjectStoreRef;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use fleetlake_core::bronze::TableSpec;
use tokio::sync::Mutex;
use tracing::warn;

use crate::{open_existing, open_or_create, DeltaError, DeltaSettings};

/// One table's place in the cache, with when its last load or update started (`None`: a writer's table, whose state
/// predates its own commit): empty while a writer has it out, or before it is first opened.
type Slot = Arc<Mutex<Option<(DeltaTable, Option<Instant>)>>>;

/// The bronze tables a function has open, by name. Each table has a lock of its own: two tables are loaded or
/// brought up to date at the same time.
#[derive(Debug)]
pub struct TableCache {
    settings: DeltaSettings,
    slots: std::sync::Mutex<HashMap<&'static str, Slot>>,
    stores: std::sync::Mutex<HashMap<&'static str, ObjectStoreRef>>,
}

impl TableCache {
    /// An empty cache of the tables under `settings.bronze_url`.
    pub fn new(settings: DeltaSettings) -> Self {
        Self { settings, slots: std::sync::Mutex::new(HashMap::new()), stores: std::sync::Mutex::new(HashMap::new()) }
    }

    fn slot(&self, spec: &'static TableSpec) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(slots.entry(spec.name).or_default())
    }

    /// Where the tables live.
    pub fn settings(&self) -> &DeltaSettings {
        &self.settings
    }

    /// The table at its latest version, or `None` when it does not exist (yet). Readers use this.
    pub async fn latest(&self, spec: &'static TableSpec) -> Result<Option<DeltaTable>, DeltaError> {
        self.latest_since(spec, Instant::now()).await
    }

    /// The table as loaded or brought up to date at `since` or later, or `None` when it does not exist (yet): a
    /// table kept from before `since` is brought up to date, one loaded since (by a call of the same invocation
    /// that started earlier) is taken as it is. A reader notified of a commit passes the time it was notified: the
    /// table then holds that commit, and two parts of the work that both want the table cost one load.
    pub async fn latest_since(
        &self,
        spec: &'static TableSpec,
        since: Instant,
    ) -> Result<Option<DeltaTable>, DeltaError> {
        let slot = self.slot(spec);
        let mut kept = slot.lock().await;
        let started = Instant::now();
        // The kept table stays in its slot until a newer one replaces it: a load dropped half way (a replay that
        // stops early drops the loads it started) leaves it for the next invocation.
        let kept_table = match kept.as_ref() {
            Some((t, Some(at))) if *at >= since => return Ok(Some(t.clone())),
            Some((t, _)) => Some(t.clone()),
            None => None,
        };
        let table = match kept_table {
            Some(mut t) => match t.update_incremental(None).await {
                Ok(()) => t,
                Err(e) => {
                    warn!(table = spec.name, error = %e, "bringing the kept table up to date failed; loading it again");
                    match self.open(spec).await? {
                        Some(t) => t,
                        None => {
                            *kept = None;
                            return Ok(None);
                        }
                    }
                }
            },
            None => match self.open(spec).await? {
                Some(t) => t,
                None => return Ok(None),
            },
        };
        *kept = Some((table.clone(), Some(started)));
        Ok(Some(table))
    }

    /// The table's storage (rooted at the table), without loading the table: for reading data files a commit named.
    pub fn store(&self, spec: &'static TableSpec) -> Result<ObjectStoreRef, DeltaError> {
        let mut stores = self.stores.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(store) = stores.get(spec.name) {
            return Ok(Arc::clone(store));
        }
        let err = |source| DeltaError::Delta { table: spec.name, source };
        let table = DeltaTableBuilder::from_url(self.settings.table_url(spec)?)
            .map_err(err)?
            .with_storage_options(self.settings.storage_options.clone())
            .build()
            .map_err(err)?;
        let store = table.object_store();
        stores.insert(spec.name, Arc::clone(&store));
        Ok(store)
    }

    /// The table at its latest version, created (or evolved to the schema) first when needed; taken out of the
    /// cache until [`TableCache::put`] returns it. Writers use this.
    pub async fn take_or_create(&self, spec: &'static TableSpec) -> Result<DeltaTable, DeltaError> {
        let kept = self.slot(spec).lock().await.take();
        match kept {
            Some((mut table, _)) => match table.update_incremental(None).await {
                Ok(()) => Ok(table),
                Err(e) => {
                    warn!(table = spec.name, error = %e, "bringing the kept table up to date failed; opening it again");
                    open_or_create(&self.settings, spec).await
                }
            },
            None => open_or_create(&self.settings, spec).await,
        }
    }

    /// Keeps `table` for the next invocation.
    pub async fn put(&self, spec: &'static TableSpec, table: DeltaTable) {
        *self.slot(spec).lock().await = Some((table, None));
    }

    async fn open(&self, spec: &'static TableSpec) -> Result<Option<DeltaTable>, DeltaError> {
        let url = self.settings.table_url(spec)?;
        match open_existing(spec, url, self.settings.storage_options.clone()).await {
            Ok(t) => Ok(Some(t)),
            Err(DeltaError::Delta { source: DeltaTableError::NotATable(_), .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
