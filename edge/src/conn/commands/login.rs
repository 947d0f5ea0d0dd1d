//! Login and logout (codes 3 and 4): the token checked by
//! [`crate::auth`], the user recorded in the hub, and the user's bucket
//! followed by the bus.

use crate::conn::Session;
use crate::conn::io::Socket;
use crate::interest::Key;
use crate::protocol::{Code, Reply};
use bytes::Bytes;
use gpush_common::subject::user_bucket;
use serde_json::Value;

impl<S: Socket> Session<S> {
    pub(super) async fn login(&mut self, token: Value, id: Option<&Value>) -> Bytes {
        let uid = match self.shared.auth.login(&token).await {
            Ok(uid) => uid,
            Err(e) => {
                tracing::debug!(error = %e, "login refused");
                return Reply::new(Code::AuthFailed)
                    .id(id)
                    .detail(&e.to_string())
                    .frame(self.conn.format);
            }
        };
        if self.uid.as_deref() != Some(uid.as_str()) {
            self.logout().await;
            self.shared.hub.login(&uid, &self.conn);
            self.uid = Some(uid.as_str().into());
            self.shared
                .interest
                .ensure(Key::UserBucket(user_bucket(&uid)))
                .await;
        }
        Reply::new(Code::LoggedIn)
            .uid(&uid)
            .id(id)
            .frame(self.conn.format)
    }

    /// Drops the login and every private subscription.
    pub(in crate::conn) async fn logout(&mut self) {
        let Some(uid) = self.uid.take() else { return };
        for topic in std::mem::take(&mut self.private).0 {
            self.shared
                .hub
                .unsubscribe_private(&uid, &topic, self.conn.id);
        }
        if self.shared.hub.logout(&uid, self.conn.id) {
            self.shared
                .interest
                .release(Key::UserBucket(user_bucket(&uid)))
                .await;
        }
    }
}
