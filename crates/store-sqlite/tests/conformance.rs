//! The Store conformance suite, run against SQLite.

use baton_store_sqlite::SqliteStore;

baton_store::store_conformance_tests!(
    async { SqliteStore::open_temp().expect("open sqlite store") },
    reopen = |store: SqliteStore| async move { store.reopen().expect("reopen sqlite store") },
);
