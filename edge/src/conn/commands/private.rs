//! Subscribe and unsubscribe to the logged-in user's private topics
//! (codes 5 and 6), recorded in the hub's private index.

use crate::conn::Session;
use crate::conn::io::Socket;
use crate::protocol::{Code, Reply};
use bytes::Bytes;
use serde_json::Value;

impl<S: Socket> Session<S> {
    pub(super) fn subscribe_private(&mut self, topic: String, id: Option<&Value>) -> Bytes {
        let uid = match self.private_uid(&topic, id) {
            Ok(uid) => uid,
            Err(reply) => return reply,
        };
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
        let uid = match self.private_uid(&topic, id) {
            Ok(uid) => uid,
            Err(reply) => return reply,
        };
        if self.private.contains(&topic) {
            self.shared
                .hub
                .unsubscribe_private(uid, &topic, self.conn.id);
            self.private.remove(&topic);
        }
        Reply::new(Code::Unsubscribed)
            .topic(&topic)
            .id(id)
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
