//! A WebSocket client driven by hand that never answers anything.
//!
//! tungstenite answers server pings whenever its stream is read, so a
//! [`crate::WsClient`] cannot both read frames and stay silent. The idle
//! timeout test needs exactly that: watch the server's pings and its close
//! frame arrive while sending nothing back. This client does the HTTP
//! upgrade itself, can send a few requests, and afterwards only reads and
//! parses server frames (which are never masked).

use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

/// Opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Opcode of a close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
pub const OP_PING: u8 = 0x9;
/// Opcode of a pong frame.
pub const OP_PONG: u8 = 0xA;

/// One frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireFrame {
    /// The opcode (see the `OP_*` constants).
    pub opcode: u8,
    /// The (unmasked) payload.
    pub payload: Vec<u8>,
}

impl WireFrame {
    /// For a close frame, its status code.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == OP_CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// A masked client frame with `opcode` (one of the `OP_*` constants, or
/// any other value for malformed frames), the FIN bit as given, and
/// `payload` masked with a fixed non-zero key.
pub fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![if fin { 0x80 } else { 0 } | (opcode & 0x0F)];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

/// Sends `request` (raw bytes, anything) to `addr` and returns what comes
/// back until the server closes the connection or `within` passes.
pub async fn exchange(addr: &str, request: &[u8], within: Duration) -> Vec<u8> {
    let deadline = Instant::now() + within;
    let mut stream = timeout_at(deadline, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connect to {addr} timed out"))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    // The server may answer and close before reading everything.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(Ok(n)) = timeout_at(deadline, stream.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
    }
    answer
}

/// How a [`SilentClient`]'s connection ended.
#[derive(Debug)]
pub struct Ending {
    /// Every frame received before the end, the close frame excluded.
    pub frames: Vec<WireFrame>,
    /// The close frame, if the server sent one.
    pub close: Option<WireFrame>,
}

impl Ending {
    /// The close code, if the server sent a close frame with one.
    pub fn close_code(&self) -> Option<u16> {
        self.close.as_ref().and_then(WireFrame::close_code)
    }

    /// Number of received frames with `opcode`.
    pub fn count(&self, opcode: u8) -> usize {
        self.frames.iter().filter(|f| f.opcode == opcode).count()
    }
}

/// A raw WebSocket connection that sends nothing unless told to.
#[derive(Debug)]
pub struct SilentClient {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl SilentClient {
    /// Connects to `url` (`ws://host:port/path`) and completes the upgrade.
    pub async fn connect(url: &str) -> Self {
        let rest = url
            .strip_prefix("ws://")
            .unwrap_or_else(|| panic!("SilentClient needs a ws:// URL, got {url:?}"));
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let deadline = Instant::now() + crate::TIMEOUT;
        let mut stream = timeout_at(deadline, TcpStream::connect(host))
            .await
            .unwrap_or_else(|_| panic!("connect to {host} timed out"))
            .unwrap_or_else(|e| panic!("connect to {host}: {e}"));
        let request = format!(
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("send upgrade request to {url}: {e}"));
        let mut buffer = Vec::new();
        let header_end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = timeout_at(deadline, stream.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("upgrade response from {url} timed out"))
                .unwrap_or_else(|e| panic!("upgrade response from {url}: {e}"));
            assert!(n > 0, "{url} closed during the upgrade");
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "{url} refused the upgrade: {head}"
        );
        buffer.drain(..header_end);
        Self { stream, buffer }
    }

    /// Sends one masked text frame (e.g. a subscribe request).
    pub async fn send_text(&mut self, text: &str) {
        self.send_raw(&client_frame(OP_TEXT, true, text.as_bytes()))
            .await;
    }

    /// Sends bytes as they are: hand-made frames, broken ones included.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .unwrap_or_else(|e| panic!("SilentClient send: {e}"));
    }

    /// The next frame the server sends, or `None` when the stream ends
    /// first. Panics if nothing comes within `within`.
    pub async fn next_frame(&mut self, within: Duration) -> Option<WireFrame> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(frame) = self.parse() {
                return Some(frame);
            }
            let mut chunk = [0u8; 16 * 1024];
            match timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(_) => panic!("silent client: no frame within {within:?}"),
            }
        }
    }

    /// The next complete frame in the buffer, if any.
    fn parse(&mut self) -> Option<WireFrame> {
        let b = &self.buffer;
        if b.len() < 2 {
            return None;
        }
        let opcode = b[0] & 0x0F;
        let masked = b[1] & 0x80 != 0;
        let (len, mut at) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(bytes) as usize, 10)
            }
            126 | 127 => return None,
            len => (len as usize, 2),
        };
        let mask = if masked {
            let key = b.get(at..at + 4)?.to_vec();
            at += 4;
            Some(key)
        } else {
            None
        };
        let mut payload = b.get(at..at + len)?.to_vec();
        if let Some(key) = mask {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= key[i % 4];
            }
        }
        self.buffer.drain(..at + len);
        Some(WireFrame { opcode, payload })
    }

    /// Reads (never writing anything) until the server sends a close frame
    /// or the stream ends. Panics if neither happens within `within`.
    pub async fn read_until_close(&mut self, within: Duration) -> Ending {
        let deadline = Instant::now() + within;
        let mut frames = Vec::new();
        loop {
            while let Some(frame) = self.parse() {
                if frame.opcode == OP_CLOSE {
                    return Ending {
                        frames,
                        close: Some(frame),
                    };
                }
                frames.push(frame);
            }
            let mut chunk = [0u8; 16 * 1024];
            match timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    return Ending {
                        frames,
                        close: None,
                    };
                }
                Ok(Ok(n)) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(_) => panic!(
                    "silent client: connection still open after {within:?} ({} frames: {:?})",
                    frames.len(),
                    frames
                        .iter()
                        .map(|f: &WireFrame| f.opcode)
                        .collect::<Vec<_>>()
                ),
            }
        }
    }
}
