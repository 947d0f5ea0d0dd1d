//! The close handshake: leave every index, send the close frame after
//! what is queued, and wait briefly for the client's.

use super::Session;
use super::io::{ReadOutcome, Socket, read_available, write_all};
use crate::close::Close;
use crate::interest::Key;
use crate::ws::{self, Incoming};
use std::time::Duration;
use tokio::time::Instant;

/// How long closing may take: writing what is queued and the close frame,
/// then waiting for the client's close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

impl<S: Socket> Session<S> {
    /// Sends the close frame (after what is queued), waits briefly for the
    /// client's, and leaves every index.
    pub(super) async fn finish(mut self, close: Close) {
        self.leave().await;
        if !close.sends_frame() {
            return;
        }
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        if close != Close::SlowConsumer {
            self.conn.outbox.take(&mut self.pending);
        }
        self.pending
            .push_back(ws::close(close.code(), close.reason()));
        let stats = &self.shared.hub.stats;
        let written = write_all(
            &self.stream,
            &mut self.pending,
            stats,
            self.conn.id,
            deadline,
        );
        if written.await.is_err() {
            return;
        }
        // Wait for the client's close frame (or EOF), discarding the rest.
        let mut discard = Vec::new();
        while let Ok(Ok(())) = tokio::time::timeout_at(deadline, self.stream.readable()).await {
            match read_available(&self.stream, &mut self.reader, usize::MAX, &mut discard) {
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
        for topic in std::mem::take(&mut self.public).0 {
            if self.shared.hub.unsubscribe(&topic, self.conn.id) {
                self.shared.interest.release(Key::Topic(topic.into())).await;
            }
        }
    }
}
