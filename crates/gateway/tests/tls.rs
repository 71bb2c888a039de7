//! Upstreams over TLS, as a cloud API or a private vLLM is reached: a local
//! HTTPS server with its own certificate stands in for them.

use std::sync::Arc;

use axum::routing::post;
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use switchyard_gateway::routing::RoutingOptions;
use switchyard_gateway::{router, AppState};
use switchyard_router::{Policy, Prices};

/// Serves a minimal chat completion over HTTPS with a self-signed
/// certificate for 127.0.0.1; returns its port and the certificate (PEM).
async fn https_upstream() -> (u16, String) {
    let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![key.cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.key_pair.serialize_der())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let app = Router::new().route(
        "/v1/chat/completions",
        post(|Json(body): Json<Value>| async move {
            Json(json!({
                "id": "c1", "object": "chat.completion", "created": 1, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "over tls"}, "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                // A client that does not trust the certificate aborts the handshake.
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, key.cert.pem())
}

fn policy(port: u16, ca_file: &str) -> String {
    format!(
        r#"
version = "tls.1"
default_route = "private"

[[routes]]
name = "private"
backend = "upstream"
model = "m"
url = "https://127.0.0.1:{port}/v1"
ca_file = "{ca_file}"
allowed_classes = ["public"]

[[routes]]
name = "untrusted"
backend = "upstream"
model = "m"
url = "https://127.0.0.1:{port}/v1"
allowed_classes = ["public"]
"#
    )
}

#[tokio::test]
async fn an_https_upstream_answers_when_its_ca_is_trusted_and_is_refused_when_not() {
    let (port, cert) = https_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert).unwrap();

    let state = AppState::new(vec![])
        .with_policy(
            Policy::from_toml(&policy(port, &ca.display().to_string())).unwrap(),
            Prices::default(),
            RoutingOptions { allow_force_route: true, ..Default::default() },
        )
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(Arc::new(state), 1 << 20)).await.unwrap() });

    let http = reqwest::Client::new();
    let ask = |route: &'static str| {
        http.post(format!("{base}/v1/chat/completions"))
            .header("x-switchyard-force-route", route)
            .json(&json!({"model": "any", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    let resp = ask("private").await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "over tls", "{body}");

    // The same server without its CA: the certificate is checked, and the
    // error says why the upstream was unreachable.
    let resp = ask("untrusted").await.unwrap();
    assert_eq!(resp.status(), 502);
    let body = resp.text().await.unwrap();
    assert!(body.contains("upstream untrusted unreachable") && body.to_lowercase().contains("certificate"), "{body}");
}

#[test]
fn a_ca_file_that_is_missing_or_not_pem_is_refused_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    for path in [dir.path().join("missing.pem"), garbage] {
        let p = Policy::from_toml(&policy(1, &path.display().to_string())).unwrap();
        let err = AppState::new(vec![])
            .with_policy(p, Prices::default(), RoutingOptions::default())
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("routes[0].ca_file"), "{err}");
    }
}
