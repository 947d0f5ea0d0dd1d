//! The per-connection request rate limit: a token bucket on the hub's
//! clock, and the close of a client that keeps sending over its rate.

use super::Session;
use super::io::Socket;
use crate::protocol::{Code, Reply};
use bytes::Bytes;
use serde_json::Value;

impl<S: Socket> Session<S> {
    /// Takes a token for one request; false when the connection is over
    /// its rate. Refusals are forgiven once the bucket is full again (the
    /// client paused for `request_burst / request_rate`); a connection
    /// refused `request_burst` times before that keeps sending over its
    /// rate and is marked for closing with [`Close::RateLimited`](crate::close::Close::RateLimited). (Counting
    /// refusals in a row instead would never close a flood, since every
    /// refilled token breaks the row.)
    pub(super) fn admit_request(&mut self) -> bool {
        let rate = self.shared.config.request_limit();
        let now = self.shared.hub.now_ms();
        if self.bucket.available(rate, now) >= rate.burst {
            self.refused = 0;
        }
        if self.bucket.try_take(1, rate, now).is_ok() {
            return true;
        }
        self.refused = self.refused.saturating_add(1);
        if self.refused >= rate.burst {
            // The one close decided here rather than in the outbox: see
            // `Session::closing`.
            self.closing = true;
        }
        false
    }

    /// The 30006 reply to a request refused by the rate limit.
    pub(super) fn rate_limited(&self, id: Option<&Value>) -> Bytes {
        Reply::new(Code::RateLimited)
            .id(id)
            .detail("too many requests: slow down")
            .frame(self.conn.format)
    }
}
