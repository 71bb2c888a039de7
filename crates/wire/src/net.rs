//! Serving helpers shared by switchyard's servers.

use std::net::SocketAddr;

use axum::serve::{Listener, ListenerExt};
use tokio::net::TcpListener;

/// `listener` with `TCP_NODELAY` set on every accepted connection.
///
/// Streams are many small writes (one SSE event per token or chunk). With
/// Nagle's algorithm on, a write waits for the ACK of the previous one,
/// which a client on a kept-alive connection delays by up to ~40 ms: the
/// first chunk after the response headers arrives that late. `on_error`
/// hears of a socket that refused the option (it is served anyway).
pub fn no_delay(
    listener: TcpListener,
    on_error: impl Fn(std::io::Error) + Send + 'static,
) -> impl Listener<Addr = SocketAddr> {
    listener.tap_io(move |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            on_error(e);
        }
    })
}
