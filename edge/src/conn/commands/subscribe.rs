//! Subscribe and unsubscribe to public topics (codes 1 and 2): recorded on
//! the connection and in the hub's topic index, and followed by the bus.

use crate::conn::Session;
use crate::conn::io::Socket;
use crate::interest::Key;
use crate::protocol::{Code, Reply};
use bytes::Bytes;
use serde_json::Value;

impl<S: Socket> Session<S> {
    pub(super) async fn subscribe(&mut self, topic: String, id: Option<&Value>) -> Bytes {
        if let Err(reply) = self.check_topic(&topic, id) {
            return reply;
        }
        if !self.public.contains(&topic) {
            if let Err(reply) = self.check_limit(&topic, id) {
                return reply;
            }
            let max_topics = self.shared.config.max_topics;
            if self
                .shared
                .hub
                .subscribe(&topic, &self.conn, max_topics)
                .is_err()
            {
                return Reply::new(Code::LimitReached)
                    .topic(&topic)
                    .id(id)
                    .detail(&format!(
                        "this edge serves at most {max_topics} distinct topics; retry later \
                         or on another edge"
                    ))
                    .frame(self.conn.format);
            }
            self.public.insert(&topic);
            self.shared.interest.ensure(Key::Topic(topic.clone())).await;
        }
        Reply::new(Code::Subscribed)
            .topic(&topic)
            .id(id)
            .frame(self.conn.format)
    }

    pub(super) async fn unsubscribe(&mut self, topic: String, id: Option<&Value>) -> Bytes {
        if let Err(reply) = self.check_topic(&topic, id) {
            return reply;
        }
        if self.public.remove(&topic) && self.shared.hub.unsubscribe(&topic, self.conn.id) {
            self.shared
                .interest
                .release(Key::Topic(topic.clone()))
                .await;
        }
        Reply::new(Code::Unsubscribed)
            .topic(&topic)
            .id(id)
            .frame(self.conn.format)
    }
}
