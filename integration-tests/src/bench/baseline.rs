//! The baseline: the least a WebSocket push server can do, to measure what
//! this machine allows.
//!
//! It accepts WebSocket upgrades (the same hand-written handshake as the
//! clients), treats every connection as subscribed to the one topic, and on
//! `POST /push` frames the body once as `{"code":10001,"topic":T,"data":<body>}`
//! and hands the same `Bytes` to every connection through a broadcast
//! channel. Each connection is one task that waits for the next frame or for
//! its socket to become readable (to notice the client leaving), and writes
//! every frame queued for it with one vectored write. No request parsing,
//! no per-connection buffers while idle, no timers. It runs in its own
//! process, so its resident memory is measured the same way as the edge's.

use crate::bench::cli::BaselineArgs;
use crate::bench::wire;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use bytes::Bytes;
use std::io::{self, IoSlice};
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// Frames queued per connection before a slow one starts losing them.
const QUEUE: usize = 4096;
/// Frames per vectored write.
const WRITE_BATCH: usize = 64;

/// What `POST /push` needs.
struct Hub {
    frames: broadcast::Sender<Bytes>,
    prefix: Vec<u8>,
}

/// Runs the baseline server until killed.
pub fn run(args: BaselineArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let ws = TcpListener::bind(args.ws_addr).await?;
        let http = TcpListener::bind(args.http_addr).await?;
        let (frames, _) = broadcast::channel(QUEUE);
        let hub = Arc::new(Hub {
            frames,
            prefix: format!(r#"{{"code":10001,"topic":"{}","data":"#, args.topic).into_bytes(),
        });
        let app = Router::new()
            .route("/push", post(push))
            .with_state(hub.clone());
        tokio::spawn(async move { axum::serve(http, app).await });
        loop {
            let (stream, _) = match ws.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("baseline: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let hub = hub.clone();
            tokio::spawn(async move {
                if let Err(e) = serve(stream, &hub).await {
                    eprintln!("baseline: connection: {e}");
                }
            });
        }
    })
}

/// `POST /push`: frame the body once and send it to every connection.
async fn push(State(hub): State<Arc<Hub>>, body: Bytes) -> String {
    let mut json = Vec::with_capacity(hub.prefix.len() + body.len() + 1);
    json.extend_from_slice(&hub.prefix);
    json.extend_from_slice(&body);
    json.push(b'}');
    let receivers = hub.frames.send(wire::server_text(&json)).unwrap_or(0);
    receivers.to_string()
}

/// Upgrades one connection, then forwards frames until it closes.
async fn serve(mut stream: TcpStream, hub: &Hub) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut head = Vec::with_capacity(1024);
    let end = loop {
        if let Some(end) = wire::head_len(&head)? {
            break end;
        }
        if stream.read_buf(&mut head).await? == 0 {
            return Ok(());
        }
    };
    let key = wire::request_key(&head[..end])?;
    let response = wire::upgrade_response(key);
    drop(head);
    // Subscribed before the client learns it is connected.
    let mut frames = hub.frames.subscribe();
    stream.write_all(response.as_bytes()).await?;
    loop {
        tokio::select! {
            frame = frames.recv() => {
                // Allocated per wake-up, so an idle connection holds no batch.
                let mut batch = Vec::with_capacity(WRITE_BATCH);
                match frame {
                    Ok(frame) => batch.push(frame),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        eprintln!("baseline: a connection lagged, {n} frames lost");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
                while batch.len() < WRITE_BATCH {
                    match frames.try_recv() {
                        Ok(frame) => batch.push(frame),
                        Err(_) => break,
                    }
                }
                write_all(&stream, &batch).await?;
            }
            readable = stream.readable() => {
                readable?;
                let mut discard = [0u8; 256];
                match stream.try_read(&mut discard) {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

/// Writes every frame of `batch` with vectored writes.
async fn write_all(stream: &TcpStream, batch: &[Bytes]) -> io::Result<()> {
    let mut frame = 0;
    let mut offset = 0;
    while frame < batch.len() {
        stream.writable().await?;
        let slices: Vec<IoSlice<'_>> = std::iter::once(&batch[frame][offset..])
            .chain(batch[frame + 1..].iter().map(|b| &b[..]))
            .map(IoSlice::new)
            .collect();
        let mut written = match stream.try_write_vectored(&slices) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        while frame < batch.len() && written >= batch[frame].len() - offset {
            written -= batch[frame].len() - offset;
            frame += 1;
            offset = 0;
        }
        offset += written;
    }
    Ok(())
}
