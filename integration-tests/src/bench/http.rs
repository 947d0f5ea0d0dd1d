//! A lean HTTP/1.1 keep-alive client for load generation.
//!
//! reqwest costs about as much CPU per call as the ingress it would
//! measure; on a two-core machine that halves the figure. This client sends
//! prebuilt request bytes and reads only the status line and
//! `Content-Length` of each response, one call in flight per connection.

use crate::bench::wire;
use bytes::Bytes;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connecting, writing or reading failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection.
    #[error("connection closed by the server")]
    Closed,
    /// The response head is not what an HTTP/1.1 server sends.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// A non-2xx status.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The body, as text.
        body: String,
    },
}

/// A `POST path` request with a JSON body, as bytes to send as they are.
pub fn post_request(host: &str, path: &str, body: &[u8]) -> Bytes {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request.into()
}

/// One keep-alive connection.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Connection {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<Self, HttpError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends `request` and reads its response; an error unless it is 2xx.
    pub async fn call(&mut self, request: &[u8]) -> Result<(), HttpError> {
        self.stream.write_all(request).await?;
        let head = loop {
            match wire::head_len(&self.buf) {
                Ok(Some(head)) => break head,
                Ok(None) => self.read_more().await?,
                Err(e) => return Err(HttpError::Malformed(e.to_string())),
            }
        };
        let (status, length) = parse_head(&self.buf[..head])?;
        while self.buf.len() < head + length {
            self.read_more().await?;
        }
        let result = if (200..300).contains(&status) {
            Ok(())
        } else {
            let body = String::from_utf8_lossy(&self.buf[head..head + length]).into_owned();
            Err(HttpError::Status { status, body })
        };
        self.buf.drain(..head + length);
        result
    }

    async fn read_more(&mut self) -> Result<(), HttpError> {
        self.buf.reserve(4096);
        match self.stream.read_buf(&mut self.buf).await? {
            0 => Err(HttpError::Closed),
            _ => Ok(()),
        }
    }
}

/// Status and `Content-Length` of a response head.
fn parse_head(head: &[u8]) -> Result<(u16, usize), HttpError> {
    let text = std::str::from_utf8(head).map_err(|e| HttpError::Malformed(e.to_string()))?;
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.strip_prefix("HTTP/1.1 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| HttpError::Malformed(text.to_owned()))?;
    let length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| value.trim().parse())
        .transpose()
        .map_err(|_| HttpError::Malformed(text.to_owned()))?
        .ok_or_else(|| HttpError::Malformed(format!("no Content-Length: {text}")))?;
    Ok((status, length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse() {
        let head =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 42\r\n\r\n";
        assert_eq!(parse_head(head).expect("valid"), (200, 42));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        let request = post_request("h:1", "/v1/pushData", b"{}");
        assert!(request.ends_with(b"Content-Length: 2\r\n\r\n{}"));
    }

    #[tokio::test]
    async fn calls_against_a_real_server() {
        let app = axum::Router::new().route(
            "/x",
            axum::routing::post(|body: String| async move { body.to_uppercase() }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut connection = Connection::connect(addr).await.expect("connect");
        let request = post_request(&addr.to_string(), "/x", b"abc");
        for _ in 0..3 {
            connection.call(&request).await.expect("call");
        }
        let missing = post_request(&addr.to_string(), "/missing", b"");
        assert!(matches!(
            connection.call(&missing).await,
            Err(HttpError::Status { status: 404, .. })
        ));
    }
}
