//! Test only (`conformance_echo`): every text or binary message is
//! answered with itself, in place of the request dispatch, so
//! Autobahn|Testsuite's cases can drive the real connection loop (frame
//! reader, control frames, close handshake, outbox and writes).

use super::io::WRITE_SLICES;
use super::{Flow, Session, Socket};
use crate::close::Close;
use crate::ws::{self, Incoming};

impl<S: Socket> Session<S> {
    /// Echoes each message, answers pings, and ends on a close frame.
    pub(super) fn echo(&mut self, incoming: Vec<Incoming>) -> Flow {
        for (n, message) in incoming.into_iter().enumerate() {
            if self.closing {
                break;
            }
            if n > 0 && n % WRITE_SLICES == 0 {
                let _ = self.flush();
            }
            match message {
                Incoming::Text(data) => self.queue(ws::text(&data)),
                Incoming::Binary(data) => self.queue(ws::binary(&data)),
                Incoming::Ping(payload) => self.queue(ws::pong(&payload)),
                Incoming::Pong => {}
                Incoming::Close(code) => return Flow::End(Close::answering(code)),
            }
        }
        let _ = self.flush();
        Flow::Continue
    }
}
