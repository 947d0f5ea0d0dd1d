//! Subscribe and unsubscribe to public topics (codes 1 and 2): recorded on
//! the connection and in the hub's topic index, and followed by the bus.
//! A subscribe with `since` recovers what was missed ([`super::recovery`]).

use super::Origin;
use super::recovery::Join;
use crate::conn::Session;
use crate::conn::io::Socket;
use crate::hub::NotAdded;
use crate::interest::Key;
use crate::protocol::request::Since;
use crate::protocol::{Code, Reply};
use bytes::Bytes;
use gpush_common::history::StreamKey;

impl<S: Socket> Session<S> {
    /// Subscribes; the reply (and any recovered pushes) are queued here,
    /// in order with the topic's pushes, so nothing is returned.
    pub(super) async fn subscribe(
        &mut self,
        topic: String,
        origin: Origin<'_>,
        since: Option<Since>,
    ) -> Bytes {
        let id = origin.id();
        if let Err(reply) = self.check_topic(&topic, id) {
            return reply;
        }
        let hub = self.shared.hub.clone();
        let key = StreamKey::Topic(&topic);
        let interest = self.shared.interest.clone();
        interest.follow(Key::Topic(topic.clone()), key).await;
        let follower = interest.follower();
        let mut join = Join::new(&hub.history, key, since);
        if join.recovered().is_some() && self.public.contains(&topic) {
            // Subscribed already, and asking from `since` (after a 10007,
            // say): join again from there. The bus subscription stays.
            hub.unsubscribe(&topic, self.conn.id);
            self.public.remove(&topic);
            self.presence_topic(&topic, false);
        }
        let reply = |offset: u64, join: &Join| {
            self.joined_reply(origin.subscribed(false), &topic, join, offset)
        };
        if self.public.contains(&topic) {
            hub.with_topic_offset(&topic, |offset| {
                self.queue(reply(offset.unwrap_or(0), &join));
            });
            return Bytes::new();
        }
        if let Err(reply) = self.check_limit(&topic, id) {
            return reply;
        }
        let max_topics = self.shared.config.max_topics;
        let max_recover = self.shared.config.history.max_recover;
        let format = self.conn.format;
        let first = loop {
            let expected = join
                .expected(&hub, follower, key, max_recover, |_| true)
                .await;
            let joined = |offset| self.queue_joined(reply(offset, &join), &join);
            match hub.subscribe_at(&topic, &self.conn, max_topics, expected, joined) {
                Ok((first, _)) => break first,
                // Topics take any number of subscribers.
                Err(NotAdded::Moved(_) | NotAdded::Crowded) => continue,
                Err(NotAdded::Full) => {
                    return Reply::new(Code::LimitReached)
                        .topic(&topic)
                        .id(id)
                        .detail(&format!(
                            "this edge serves at most {max_topics} distinct topics; retry later \
                             or on another edge"
                        ))
                        .frame(format);
                }
            }
        };
        self.public.insert(&topic);
        self.presence_topic(&topic, true);
        if first {
            self.shared.interest.ensure(Key::Topic(topic.clone())).await;
        }
        Bytes::new()
    }

    pub(super) async fn unsubscribe(&mut self, topic: String, origin: Origin<'_>) -> Bytes {
        if let Err(reply) = self.check_topic(&topic, origin.id()) {
            return reply;
        }
        if self.public.remove(&topic) {
            self.presence_topic(&topic, false);
            if self.shared.hub.unsubscribe(&topic, self.conn.id) {
                self.shared
                    .interest
                    .release(Key::Topic(topic.clone()))
                    .await;
            }
        }
        origin
            .unsubscribed(false)
            .topic(&topic)
            .frame(self.conn.format)
    }

    /// `reply` to a join of a stream at `offset`, with its position where
    /// it keeps history and whether what was missed follows.
    pub(super) fn joined_reply(
        &self,
        reply: Reply<'_>,
        topic: &str,
        join: &Join,
        offset: u64,
    ) -> Bytes {
        let mut reply = reply.recovered(join.recovered());
        if !topic.is_empty() {
            reply = reply.topic(topic);
        }
        if let Some(epoch) = &join.epoch {
            reply = reply.position(offset, epoch);
        }
        reply.frame(self.conn.format)
    }
}
