//! Subscribe and unsubscribe to the logged-in user's private topics
//! (codes 5 and 6), recorded in the hub's private index.

use super::Origin;
use super::recovery::Join;
use crate::conn::Session;
use crate::conn::io::Socket;
use crate::protocol::request::Since;
use crate::protocol::{Code, Reply};
use bytes::Bytes;
use gpush_common::history::StreamKey;
use serde_json::Value;

impl<S: Socket> Session<S> {
    /// Subscribes to a private topic; as for public ones, the reply (and
    /// any recovered pushes: the user's stream's pushes to this topic) is
    /// queued here. A private topic's offsets are those of its user's
    /// stream.
    pub(super) async fn subscribe_private(
        &mut self,
        topic: String,
        origin: Origin<'_>,
        since: Option<Since>,
    ) -> Bytes {
        let id = origin.id();
        let uid = match self.private_uid(&topic, id) {
            Ok(uid) => uid.to_owned(),
            Err(reply) => return reply,
        };
        let hub = self.shared.hub.clone();
        let key = StreamKey::User(&uid);
        let interest = self.shared.interest.clone();
        let follower = interest.follower();
        let mut join = Join::new(&hub.history, key, since);
        if join.recovered().is_some() && self.private.contains(&topic) {
            // Subscribed already, and asking from `since` (after a 10007,
            // say): join again from there. The bus subscription stays.
            hub.unsubscribe_private(&uid, &topic, self.conn.id);
            self.private.remove(&topic);
        }
        let reply = |offset: u64, join: &Join| {
            self.joined_reply(origin.subscribed(true), &topic, join, offset)
        };
        if self.private.contains(&topic) {
            hub.with_user_offset(&uid, |offset| self.queue(reply(offset.unwrap_or(0), &join)));
            return Bytes::new();
        }
        if let Err(reply) = self.check_limit(&topic, id) {
            return reply;
        }
        let max_recover = self.shared.config.history.max_recover;
        loop {
            let expected = join
                .expected(&hub, follower, key, max_recover, |entry| {
                    entry.push.topic == topic
                })
                .await;
            let joined = |offset| self.queue_joined(reply(offset, &join), &join);
            if hub
                .subscribe_private_at(&uid, &topic, &self.conn, expected, joined)
                .is_ok()
            {
                break;
            }
        }
        self.private.insert(&topic);
        Bytes::new()
    }

    pub(super) fn unsubscribe_private(&mut self, topic: String, origin: Origin<'_>) -> Bytes {
        let uid = match self.private_uid(&topic, origin.id()) {
            Ok(uid) => uid,
            Err(reply) => return reply,
        };
        if self.private.contains(&topic) {
            self.shared
                .hub
                .unsubscribe_private(uid, &topic, self.conn.id);
            self.private.remove(&topic);
        }
        origin
            .unsubscribed(true)
            .topic(&topic)
            .frame(self.conn.format)
    }

    /// The user a private request acts for, or its error reply: not logged
    /// in, or a topic that is not acceptable.
    fn private_uid(&self, topic: &str, id: Option<&Value>) -> Result<&str, Bytes> {
        let Some(uid) = &self.uid else {
            return Err(Reply::new(Code::NotLoggedIn)
                .topic(topic)
                .id(id)
                .frame(self.conn.format));
        };
        self.check_topic(topic, id)?;
        Ok(uid)
    }
}
