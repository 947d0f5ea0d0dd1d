//! Presence (see [`crate::presence`]): the connection counted in the
//! presence of each tracked topic it subscribes to and, when tracked, in
//! the logged-in users, as it subscribes, logs in and out and leaves; and
//! request code 7, a topic's presence (reply 20005, or 30007 unless the
//! topic's rule allows queries and the connection is subscribed to it).

use crate::conn::Session;
use crate::conn::io::Socket;
use crate::presence::QUERY_WAIT;
use crate::protocol::{Code, Reply};
use bytes::Bytes;
use serde_json::Value;

impl<S: Socket> Session<S> {
    /// Counts this connection in (`add`) or out of tracked `topic`'s
    /// presence, as its login is now.
    pub(in crate::conn) fn presence_topic(&self, topic: &str, add: bool) {
        let presence = &self.shared.presence;
        if presence.tracks(topic) {
            presence.topic_changed(topic, self.uid.as_deref(), add);
        }
    }

    /// The connection's login changes from `from` to `to` (None: none):
    /// moves it in the presence of each tracked topic it is subscribed to,
    /// and in the logged-in users.
    pub(in crate::conn) fn presence_login(&self, from: Option<&str>, to: Option<&str>) {
        let presence = &self.shared.presence;
        if !presence.active() {
            return;
        }
        for topic in &self.public.0 {
            if presence.tracks(topic) {
                presence.topic_changed(topic, from, false);
                presence.topic_changed(topic, to, true);
            }
        }
        if let Some(uid) = from {
            presence.user_changed(uid, false);
        }
        if let Some(uid) = to {
            presence.user_changed(uid, true);
        }
    }

    /// Request code 7: who is subscribed to `topic`, cluster-wide.
    pub(super) async fn presence_query(&mut self, topic: String, id: Option<&Value>) -> Bytes {
        if let Err(reply) = self.check_topic(&topic, id) {
            return reply;
        }
        let format = self.conn.format;
        let presence = self.shared.presence.clone();
        let refuse = |detail: &str| {
            Reply::new(Code::NotAllowed)
                .topic(&topic)
                .id(id)
                .detail(detail)
                .frame(format)
        };
        if !presence.queryable(&topic) {
            return refuse(
                "presence queries are not enabled for this topic (a [presence] rule with \
                 query = true)",
            );
        }
        if !self.public.contains(&topic) {
            return refuse("subscribe to the topic first");
        }
        let (users, anonymous) = presence.query(&topic, QUERY_WAIT).await;
        Reply::new(Code::Presence)
            .topic(&topic)
            .presence(&users, anonymous)
            .id(id)
            .frame(format)
    }
}
