//! Each store test runs on SQLite and, where a server answers, PostgreSQL.

use switchyard_store::Store;

/// One database under test.
pub struct Db {
    pub name: &'static str,
    pub store: Store,
    /// A second, independent way in: another process, in effect.
    another: Another,
    _dir: Option<tempfile::TempDir>,
}

enum Another {
    SqliteReader(std::path::PathBuf),
    Postgres(String),
}

impl Db {
    pub async fn another(&self) -> Store {
        match &self.another {
            Another::SqliteReader(path) => Store::open_read_only(path).await.unwrap(),
            Another::Postgres(url) => Store::connect(url).await.unwrap(),
        }
    }
}

/// A fresh SQLite store, then a fresh PostgreSQL schema if a server answers.
pub async fn databases() -> Vec<Db> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let sqlite = Db {
        name: "sqlite",
        store: Store::open(&path).await.unwrap(),
        another: Another::SqliteReader(path),
        _dir: Some(dir),
    };
    let mut all = vec![sqlite];
    if let Some(url) = switchyard_store::testing::fresh_postgres().await {
        let store = Store::connect(&url).await.unwrap();
        all.push(Db { name: "postgres", store, another: Another::Postgres(url), _dir: None });
    }
    all
}
