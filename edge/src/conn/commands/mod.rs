//! The client's requests, one file per command family: what each does to
//! the connection's subscriptions, the hub's indexes and the bus interest,
//! and the reply it gets.

mod login;
mod orders;
mod presence;
mod private;
mod recovery;
mod subscribe;

use super::Session;
use super::io::Socket;
use crate::protocol::{Code, Command, Reply, Request};
use bytes::Bytes;
use gpush_common::push::validate_name;
use serde_json::Value;

/// Who asked for a subscription change.
#[derive(Debug, Clone, Copy)]
pub(super) enum Origin<'a> {
    /// The client, with its request's id: answered 20001 / 20002.
    Client(Option<&'a Value>),
    /// The server API: the client is told with 10008 / 10009.
    Server {
        /// Whether the client should subscribe again after a reconnect.
        keep: bool,
    },
}

impl<'a> Origin<'a> {
    /// The request id to echo.
    fn id(self) -> Option<&'a Value> {
        match self {
            Origin::Client(id) => id,
            Origin::Server { .. } => None,
        }
    }

    /// The reply to a subscribe (`private` or not).
    fn subscribed(self, private: bool) -> Reply<'a> {
        match self {
            Origin::Client(id) => Reply::new(Code::Subscribed).id(id),
            Origin::Server { keep } => Reply::new(Code::ServerSubscribed)
                .private(private)
                .keep(keep),
        }
    }

    /// The reply to an unsubscribe (`private` or not).
    fn unsubscribed(self, private: bool) -> Reply<'a> {
        match self {
            Origin::Client(id) => Reply::new(Code::Unsubscribed).id(id),
            Origin::Server { .. } => Reply::new(Code::ServerUnsubscribed).private(private),
        }
    }
}

impl<S: Socket> Session<S> {
    /// Carries out a request; the reply frame, or an empty one when the
    /// reply was queued already (joins queue theirs in order with the
    /// stream's pushes).
    pub(super) async fn request(&mut self, Request { command, id, since }: Request) -> Bytes {
        let id = id.as_ref();
        match command {
            Command::Subscribe(topic) => self.subscribe(topic, Origin::Client(id), since).await,
            Command::Unsubscribe(topic) => self.unsubscribe(topic, Origin::Client(id)).await,
            Command::Login(token) => self.login(token, id, since).await,
            Command::Logout => {
                self.logout().await;
                Reply::new(Code::LoggedOut).id(id).frame(self.conn.format)
            }
            Command::SubscribePrivate(topic) => {
                self.subscribe_private(topic, Origin::Client(id), since)
                    .await
            }
            Command::UnsubscribePrivate(topic) => {
                self.unsubscribe_private(topic, Origin::Client(id))
            }
            Command::Presence(topic) => self.presence_query(topic, id).await,
        }
    }

    /// Checks a topic name; the error reply when it is not acceptable.
    fn check_topic(&self, topic: &str, id: Option<&Value>) -> Result<(), Bytes> {
        validate_name(topic, self.shared.config.max_name_len).map_err(|e| {
            Reply::new(Code::InvalidTopic)
                .id(id)
                .detail(&format!("topic {e}"))
                .frame(self.conn.format)
        })
    }

    /// The limit reply when one more subscription is not allowed.
    fn check_limit(&self, topic: &str, id: Option<&Value>) -> Result<(), Bytes> {
        let max = self.shared.config.max_subscriptions;
        if self.public.len() + self.private.len() < max {
            Ok(())
        } else {
            Err(Reply::new(Code::LimitReached)
                .topic(topic)
                .id(id)
                .detail(&format!("at most {max} subscriptions per connection"))
                .frame(self.conn.format))
        }
    }
}
