//! Binding listeners with an error that says which one failed.

use std::net::SocketAddr;
use tokio::net::TcpListener;

/// Binds `addr` for the listener called `what` (e.g. `"WebSocket"`). The
/// error keeps the OS error's kind and names both the listener and the
/// address, so a port clash at start-up reads as what it is.
pub async fn bind(addr: SocketAddr, what: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot bind the {what} listener to {addr}: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn error_names_the_listener_and_address() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("local addr");
        let err = bind(addr, "test").await.expect_err("address in use");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("cannot bind the test listener to {addr}: ")),
            "{message}"
        );
    }
}
