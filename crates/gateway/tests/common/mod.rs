//! What the model-free gateway tests share.

use std::sync::Arc;

use switchyard_gateway::{router, AppState};

/// Serves `state` on a free loopback port, in the background; returns its base URL.
pub async fn listen(state: AppState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(Arc::new(state), 1 << 20)).await.unwrap() });
    base
}
