//! Subscribe and unsubscribe to the logged-in user's private topics
//! (codes 5 and 6), recorded in the hub's private index.

use crate::conn::Session;
use crate::conn::io::Socket;
use crate::protocol::{Code, Reply};
use bytes::Bytes;
use serde_json::Value;

impl<S: Socket> Session<S> {
    pub(super) fn subscribe_private(&mut self, topic: String, id: Option<&Value>) -> Bytes {
        let Some(uid) = &self.uid else {
            return Reply::new(Code::NotLoggedIn)
                .topic(&topic)
                .id(id)
                .frame(self.conn.format);
        };
        if let Err(reply) = self.check_topic(&topic, id) {
            return reply;
        }
        if !self.private.contains(&topic) {
            if let Err(reply) = self.check_limit(&topic, id) {
                return reply;
            }
            self.shared.hub.subscribe_private(uid, &topic, &self.conn);
            self.private.insert(&topic);
        }
        Reply::new(Code::Subscribed)
            .topic(&topic)
            .id(id)
            .frame(self.conn.format)
    }

    pub(super) fn unsubscribe_private(&mut self, topic: String, id: Option<&Value>) -> Bytes {
        let Some(uid) = &self.uid else {
            return Reply::new(Code::NotLoggedIn)
                .topic(&topic)
                .id(id)
                .frame(self.conn.format);
        };
        if let Err(reply) = self.check_topic(&topic, id) {
            return reply;
        }
        if self.private.remove(&topic) {
            self.shared
                .hub
                .unsubscribe_private(uid, &topic, self.conn.id);
        }
        Reply::new(Code::Unsubscribed)
            .topic(&topic)
            .id(id)
            .frame(self.conn.format)
    }
}
