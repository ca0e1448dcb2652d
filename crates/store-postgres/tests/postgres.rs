//! The Store conformance suite, run against PostgreSQL: each case in a schema of
//! its own, dropped afterwards. The server is `BATON_TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/test`.

use baton_store_postgres::{Options, PgStore};

fn url() -> String {
    std::env::var("BATON_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

baton_store::store_conformance_tests!(
    async {
        PgStore::connect_temp(&url(), Options::default())
            .await
            .expect("connect to postgres (see BATON_TEST_POSTGRES_URL)")
    },
    reopen =
        |store: PgStore| async move { store.reopen().await.expect("reconnect postgres store") },
);
