//! Every way a connection ends: one type with, side by side, the close
//! code sent to the client, the reason text, the reconnect advice and the
//! `reason` label of `gpush_edge_disconnects_total`.
//!
//! Matches here are exhaustive, so a new way to end a connection must say
//! its code and its label before it compiles. Modelled on centrifuge's
//! `disconnect.go`.

use crate::ws::{self, BadClose, ReadError};

/// Close code: closed normally (the answer to a client's close frame
/// without a code we may echo).
pub const NORMAL: u16 = 1000;
/// Close code: the server is going away (shutdown or restart).
pub const GOING_AWAY: u16 = 1001;
/// Close code: protocol error (an invalid close frame from the client too).
pub const PROTOCOL_ERROR: u16 = 1002;
/// Close code never sent: the connection ended without a close frame
/// (RFC 6455, 7.1.5).
pub const ABNORMAL: u16 = 1006;
/// Close code: a text message or a close reason was not valid UTF-8.
pub const INVALID_DATA: u16 = 1007;
/// Close code: a client message exceeded `max_message`.
pub const TOO_BIG: u16 = 1009;
/// Close code: the connection was silent for longer than `idle_timeout`.
pub const IDLE_TIMEOUT: u16 = 4000;
/// Close code: the client read too slowly and its queue overflowed.
pub const SLOW_CONSUMER: u16 = 4001;
/// Close code: the client kept sending requests over its rate limit
/// (refused `request_burst` times without pausing for its bucket to refill).
pub const TOO_MANY_REQUESTS: u16 = 4002;
/// Close code: the server API disconnected the user (`POST /v1/disconnect`).
/// The browser client does not reconnect by itself.
pub const DISCONNECTED: u16 = 4003;

/// Why a connection ended, and so what the edge sends and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The client sent a close frame; the answer echoes its code (see
    /// [`Close::answering`]). Reconnect: the client's own choice.
    ClientClose(u16),
    /// 1002 (1007 for a reason not UTF-8): the client's close frame was
    /// invalid. The client has closed all the same, so the answer ends the
    /// handshake. Reconnect: no, until the client is fixed.
    BadClientClose(BadClose),
    /// The TCP connection ended or failed without a close frame; nothing
    /// is sent. Reconnect: yes.
    ClientGone,
    /// 4001: the outgoing queue overflowed; queued frames are dropped.
    /// Reconnect: yes, after a pause (it will fall behind again).
    SlowConsumer,
    /// 4000: nothing heard for `idle_timeout`. Reconnect: yes.
    Idle,
    /// 1002: the client broke the WebSocket framing, for the reason given.
    /// Reconnect: no, until the client is fixed.
    Protocol(&'static str),
    /// 1009: a client message exceeded `max_message`. Reconnect: no, until
    /// the client sends smaller messages.
    TooBig,
    /// 1007: a text message or close reason was not UTF-8. Reconnect: no,
    /// until the client is fixed.
    InvalidUtf8,
    /// 1001: the edge is shutting down. Reconnect: yes, at once, to another
    /// edge.
    Shutdown,
    /// 4002: the client kept sending over its request rate. Reconnect: yes,
    /// after a pause, sending slower.
    RateLimited,
    /// 4003: the server API disconnected the user logged in on it; the
    /// close reason is the call's `reason` when it gave one. Reconnect: no,
    /// not by itself (the application decides).
    ServerDisconnect,
}

impl Close {
    /// The answer to a client's close frame: its code echoed, as RFC 6455
    /// suggests, when that code may be sent on the wire; 1000 otherwise.
    pub fn answering(code: Option<u16>) -> Self {
        Close::ClientClose(code.filter(|c| ws::may_be_sent(*c)).unwrap_or(NORMAL))
    }

    /// The close code ([`ABNORMAL`] for [`Close::ClientGone`], which sends
    /// none).
    pub fn code(self) -> u16 {
        match self {
            Close::ClientClose(code) => code,
            Close::ClientGone => ABNORMAL,
            Close::BadClientClose(BadClose::ReasonNotUtf8) => INVALID_DATA,
            Close::BadClientClose(BadClose::OneByte | BadClose::Code(_)) => PROTOCOL_ERROR,
            Close::SlowConsumer => SLOW_CONSUMER,
            Close::Idle => IDLE_TIMEOUT,
            Close::Protocol(_) => PROTOCOL_ERROR,
            Close::TooBig => TOO_BIG,
            Close::InvalidUtf8 => INVALID_DATA,
            Close::Shutdown => GOING_AWAY,
            Close::RateLimited => TOO_MANY_REQUESTS,
            Close::ServerDisconnect => DISCONNECTED,
        }
    }

    /// The reason text of the close frame.
    pub fn reason(self) -> &'static str {
        match self {
            Close::ClientClose(_) | Close::ClientGone => "",
            Close::BadClientClose(BadClose::OneByte) => "close frame of one byte",
            Close::BadClientClose(BadClose::Code(_)) => "invalid close code",
            Close::BadClientClose(BadClose::ReasonNotUtf8) => "close reason not UTF-8",
            Close::SlowConsumer => "slow consumer: outgoing queue overflowed",
            Close::Idle => "idle timeout",
            Close::Protocol(what) => what,
            Close::TooBig => "message too big",
            Close::InvalidUtf8 => "invalid UTF-8",
            Close::Shutdown => "server shutting down, reconnect to another edge",
            Close::RateLimited => "too many requests",
            Close::ServerDisconnect => "disconnected by the server",
        }
    }

    /// Whether a close frame is sent: not to a client that is gone.
    pub fn sends_frame(self) -> bool {
        !matches!(self, Close::ClientGone)
    }

    /// Whether the edge starts the closing handshake, and so waits
    /// (bounded) for the client's close frame after sending its own. When
    /// the client started it, the edge's answer completes it and TCP is
    /// closed at once (RFC 6455 7.1.1).
    pub fn awaits_client_close(self) -> bool {
        !matches!(
            self,
            Close::ClientClose(_) | Close::BadClientClose(_) | Close::ClientGone
        )
    }

    /// The `reason` label this end is counted under.
    pub fn disconnect(self) -> Disconnect {
        match self {
            Close::ClientClose(_) => Disconnect::ClientClose,
            Close::ClientGone => Disconnect::ClientGone,
            Close::SlowConsumer => Disconnect::SlowConsumer,
            Close::Idle => Disconnect::Idle,
            Close::Protocol(_) | Close::TooBig | Close::InvalidUtf8 | Close::BadClientClose(_) => {
                Disconnect::ProtocolError
            }
            Close::Shutdown => Disconnect::Shutdown,
            Close::RateLimited => Disconnect::RateLimited,
            Close::ServerDisconnect => Disconnect::Server,
        }
    }
}

impl From<&ReadError> for Close {
    fn from(error: &ReadError) -> Self {
        match error {
            ReadError::Protocol(what) => Close::Protocol(what),
            ReadError::TooBig { .. } => Close::TooBig,
            ReadError::InvalidUtf8 => Close::InvalidUtf8,
            ReadError::BadClose(what) => Close::BadClientClose(*what),
        }
    }
}

/// The `reason` label of `gpush_edge_disconnects_total`: what
/// [`Close::disconnect`] counts a connection's end as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// The client sent a close frame.
    ClientClose,
    /// The TCP connection ended or failed without a close frame.
    ClientGone,
    /// Closed with 4001: the outgoing queue overflowed.
    SlowConsumer,
    /// Closed with 4000: nothing heard for `idle_timeout`.
    Idle,
    /// Closed with 1002, 1007 or 1009: the client broke the WebSocket
    /// protocol.
    ProtocolError,
    /// Closed with 1001: the edge is shutting down.
    Shutdown,
    /// Closed with 4002: the client kept sending over its request rate.
    RateLimited,
    /// Closed with 4003: the server API disconnected the user.
    Server,
}

impl Disconnect {
    /// Every reason, in label order.
    pub const ALL: [Disconnect; 8] = [
        Disconnect::ClientClose,
        Disconnect::ClientGone,
        Disconnect::SlowConsumer,
        Disconnect::Idle,
        Disconnect::ProtocolError,
        Disconnect::Shutdown,
        Disconnect::RateLimited,
        Disconnect::Server,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Disconnect::ClientClose => "client_close",
            Disconnect::ClientGone => "client_gone",
            Disconnect::SlowConsumer => "slow_consumer",
            Disconnect::Idle => "idle",
            Disconnect::ProtocolError => "protocol_error",
            Disconnect::Shutdown => "shutdown",
            Disconnect::RateLimited => "rate_limited",
            Disconnect::Server => "server_disconnect",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_closes_name_their_code_and_label() {
        let cases = [
            (Close::SlowConsumer, SLOW_CONSUMER, Disconnect::SlowConsumer),
            (Close::Idle, IDLE_TIMEOUT, Disconnect::Idle),
            (Close::Shutdown, GOING_AWAY, Disconnect::Shutdown),
            (
                Close::RateLimited,
                TOO_MANY_REQUESTS,
                Disconnect::RateLimited,
            ),
            (Close::TooBig, TOO_BIG, Disconnect::ProtocolError),
            (Close::ServerDisconnect, DISCONNECTED, Disconnect::Server),
            (
                Close::BadClientClose(BadClose::Code(1005)),
                PROTOCOL_ERROR,
                Disconnect::ProtocolError,
            ),
            (
                Close::BadClientClose(BadClose::ReasonNotUtf8),
                INVALID_DATA,
                Disconnect::ProtocolError,
            ),
            (Close::InvalidUtf8, INVALID_DATA, Disconnect::ProtocolError),
            (
                Close::Protocol("x"),
                PROTOCOL_ERROR,
                Disconnect::ProtocolError,
            ),
        ];
        for (close, code, label) in cases {
            assert_eq!(
                (close.code(), close.disconnect()),
                (code, label),
                "{close:?}"
            );
        }
    }

    #[test]
    fn a_client_close_is_echoed_when_it_may_be_sent() {
        assert_eq!(Close::answering(Some(4321)), Close::ClientClose(4321));
        assert_eq!(Close::answering(Some(1005)), Close::ClientClose(NORMAL));
        assert_eq!(Close::answering(Some(999)), Close::ClientClose(NORMAL));
        assert_eq!(Close::answering(Some(1016)), Close::ClientClose(NORMAL));
        assert_eq!(Close::answering(None), Close::ClientClose(NORMAL));
    }
}
