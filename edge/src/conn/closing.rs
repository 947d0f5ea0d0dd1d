//! The close handshake: leave every index, send the close frame after
//! what is queued, and, when the edge started the handshake, wait briefly
//! for the client's. When the client started it, the edge's answer ends it
//! and TCP is closed at once (RFC 6455 7.1.1).

use super::Session;
use super::io::{ReadOutcome, Socket, read_available, write_all};
use crate::close::Close;
use crate::interest::Key;
use crate::ws::{self, Incoming};
use std::time::Duration;
use tokio::time::Instant;

/// How long closing may take: writing what is queued and the close frame,
/// then, when the edge started the handshake, waiting for the client's.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

impl<S: Socket> Session<S> {
    /// Leaves every index, sends the close frame (after what is queued)
    /// and, if the edge started the handshake, waits briefly for the
    /// client's; then the socket is dropped.
    pub(super) async fn finish(mut self, close: Close) {
        // The disconnect call's reason, read before leaving forgets it.
        let reason = (close == Close::ServerDisconnect)
            .then(|| self.shared.hub.disconnect_reason(self.conn.id))
            .flatten()
            .filter(|reason| !reason.is_empty());
        self.leave().await;
        if !close.sends_frame() {
            return;
        }
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        if close != Close::SlowConsumer {
            self.conn.outbox.take(&mut self.pending);
        }
        // Cut at 123 bytes by `ws::close`.
        let reason = reason.as_deref().unwrap_or(close.reason());
        self.pending.push_back(ws::close(close.code(), reason));
        let stats = &self.shared.hub.stats;
        let written = write_all(
            &self.stream,
            &mut self.pending,
            stats,
            self.conn.id,
            deadline,
        );
        if written.await.is_err() || !close.awaits_client_close() {
            return;
        }
        // Wait for the client's close frame (or EOF), discarding the rest.
        // Read under the usual limit: a frame announced over it ends the
        // wait at once instead of being buffered.
        let max_message = self.shared.config.max_message;
        let mut discard = Vec::new();
        while let Ok(Ok(())) = tokio::time::timeout_at(deadline, self.stream.readable()).await {
            match read_available(&self.stream, &mut self.reader, max_message, &mut discard) {
                Ok(ReadOutcome::Data) => {
                    if discard.iter().any(|m| matches!(m, Incoming::Close(_))) {
                        break;
                    }
                    discard.clear();
                }
                Ok(ReadOutcome::Nothing) => {}
                _ => break,
            }
        }
    }

    /// Removes the connection from the hub and releases bus interest.
    async fn leave(&mut self) {
        self.shared.hub.disconnect(self.conn.id);
        self.logout().await;
        let presence = &self.shared.presence;
        for topic in std::mem::take(&mut self.public).0 {
            if presence.tracks(&topic) {
                presence.topic_changed(&topic, None, false);
            }
            if self.shared.hub.unsubscribe(&topic, self.conn.id) {
                self.shared.interest.release(Key::Topic(topic.into())).await;
            }
        }
    }
}
