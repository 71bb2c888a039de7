//! The floor for gateway overhead: what any proxy pays to stand between a
//! client and an upstream on this machine, and nothing else.
//!
//! One thread, one hyper server, one pooled hyper client: each request's
//! head is copied with the upstream's authority, its body and the answer's
//! body stream through untouched. No parsing, no routing, no record. The
//! gateway-overhead harness runs it beside switchyard and LiteLLM, and
//! `bench/gateway-overhead/floor.py` judges switchyard against it from the
//! same run, so the judgement holds on any machine.
//!
//!   gateway-floor --listen 127.0.0.1:18095 --upstream http://127.0.0.1:18080

use std::net::SocketAddr;

use anyhow::{bail, Context};
use clap::Parser;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Upstream = Client<HttpConnector, Incoming>;

/// The floor for gateway overhead: a bare single-threaded hyper forwarder.
#[derive(Parser)]
#[command(name = "gateway-floor")]
struct Args {
    /// Address to serve on.
    #[arg(long, value_name = "HOST:PORT")]
    listen: SocketAddr,
    /// The upstream, `http://HOST:PORT`; each request's path and query are kept.
    #[arg(long, value_name = "URL")]
    upstream: Uri,
}

async fn forward(client: Upstream, upstream: Uri, mut req: Request<Incoming>) -> anyhow::Result<Response<Incoming>> {
    let mut parts = upstream.into_parts();
    parts.path_and_query = req.uri().path_and_query().cloned();
    *req.uri_mut() = Uri::from_parts(parts)?;
    req.headers_mut().remove(hyper::header::HOST);
    Ok(client.request(req).await?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let Args { listen, upstream } = Args::parse();
    if upstream.scheme_str() != Some("http") || upstream.authority().is_none() {
        bail!("--upstream {upstream}: give http://HOST:PORT (the floor speaks plain HTTP/1.1)");
    }
    let client: Upstream = Client::builder(TokioExecutor::new()).build_http();
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    eprintln!("gateway-floor: {listen} -> {upstream}");
    loop {
        let (socket, _) = listener.accept().await?;
        // As switchyard does: streamed events must not wait for a delayed ACK.
        socket.set_nodelay(true)?;
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| forward(client.clone(), upstream.clone(), req));
            // A client that goes away mid-request is not the floor's error.
            let _ = http1::Builder::new().serve_connection(TokioIo::new(socket), service).await;
        });
    }
}
