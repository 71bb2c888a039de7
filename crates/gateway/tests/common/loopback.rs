//! What the tests with a real model and a mock upstream share (included
//! with `#[path]` by those that use it, so no test binary carries an
//! unused helper).

use switchyard_engine::{Engine, EngineSettings};

/// Serves `app` on a free loopback port, in the background; returns its base URL.
pub async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// SmolLM2, pulled and verified if it is not cached, with 2 threads, 2
/// slots and a 2048-token context.
pub async fn smollm2() -> Engine {
    let path = tokio::task::spawn_blocking(|| {
        switchyard_models::ModelSpec::parse("smollm2-135m")
            .unwrap()
            .ensure(&switchyard_models::cache_dir(), switchyard_models::Progress::Quiet)
            .unwrap()
    })
    .await
    .unwrap();
    let settings = EngineSettings { threads: 2, ctx_size: 2048, parallel: 2, ..Default::default() };
    tokio::task::spawn_blocking(move || Engine::load("smollm2-135m", &path, settings).unwrap()).await.unwrap()
}
