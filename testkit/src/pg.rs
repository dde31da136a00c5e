//! The PostgreSQL the tests use: the server ci/postgres starts (or
//! `$STREAMGATE_TEST_DATABASE_URL`), a fresh schema of its own per test so
//! tests never see each other's rows.

use streamgate::rt;

/// The test database's URL.
#[must_use]
pub fn base_url() -> String {
    std::env::var("STREAMGATE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A schema made for one test.
#[derive(Debug)]
pub struct Schema {
    /// Its name.
    pub name: String,
    /// A URL whose connections use it (`search_path`).
    pub url: String,
}

impl Schema {
    /// Makes a fresh schema named `<prefix>_<random>`; its URL carries
    /// `password` when given (the test server's trust auth ignores it: a
    /// test can look for it in logs).
    ///
    /// # Panics
    /// The server does not answer: the test needs it and fails.
    pub async fn create(prefix: &str, password: Option<&str>) -> Self {
        let base = base_url();
        let name = format!("{prefix}_{}", rt::random_hex128());
        streamgate::pg::pool(&base)
            .expect("test database URL")
            .get()
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL at {base} is needed (ci/postgres starts it): {e:?}")
            })
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .expect("create schema");
        let base = match password {
            Some(pw) => base.replacen("postgres@", &format!("postgres:{pw}@"), 1),
            None => base,
        };
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{name}");
        Self { name, url }
    }

    /// Drops it, with everything in it (best effort).
    pub async fn drop(&self) {
        if let Ok(client) = streamgate::pg::pool(&base_url())
            .expect("test database URL")
            .get()
            .await
        {
            let _ = client
                .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name))
                .await;
        }
    }
}
