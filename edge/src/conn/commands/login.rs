//! Login and logout (codes 3 and 4): the token checked by
//! [`crate::auth`], the user recorded in the hub, and the user's bucket
//! followed by the bus.
//!
//! A login lasts until its token expires plus `auth.expiry_leeway`,
//! recorded in [`ConnHandle::login_ends`](crate::hub::ConnHandle::login_ends).
//! A login for the uid already logged in is a refresh: a new end, the
//! subscriptions kept. When the edge's keepalive sweep finds the end
//! past, it wakes the connection, which logs out and sends push 10004.

use crate::conn::Session;
use crate::conn::io::Socket;
use crate::interest::Key;
use crate::protocol::push::login_ended;
use crate::protocol::{Code, Reply};
use bytes::Bytes;
use gpush_common::subject::user_bucket;
use serde_json::Value;

impl<S: Socket> Session<S> {
    pub(super) async fn login(&mut self, token: Value, id: Option<&Value>) -> Bytes {
        let login = match self.shared.auth.login(&token).await {
            Ok(login) => login,
            Err(e) => {
                tracing::debug!(error = %e, "login refused");
                return Reply::new(Code::AuthFailed)
                    .id(id)
                    .detail(&e.to_string())
                    .frame(self.conn.format);
            }
        };
        let uid = login.uid;
        let ends = login.expires.map(|e| self.shared.auth.ends_at(e));
        if self.uid.as_deref() == Some(uid.as_str()) {
            // A refresh, even when the sweep just found the old end past.
            self.conn.set_login_end(ends);
        } else {
            self.logout().await;
            self.shared.hub.login(&uid, &self.conn);
            self.uid = Some(uid.as_str().into());
            self.conn.set_login_end(ends);
            self.shared
                .interest
                .ensure(Key::UserBucket(user_bucket(&uid)))
                .await;
        }
        Reply::new(Code::LoggedIn)
            .uid(&uid)
            .expires(login.expires)
            .id(id)
            .frame(self.conn.format)
    }

    /// The sweep found the login past its end: log out, and tell the
    /// client with push 10004 (behind whatever is already queued).
    pub(in crate::conn) async fn end_expired_login(&mut self) {
        let uid = self.uid.clone();
        self.logout().await;
        if let Some(uid) = uid {
            tracing::debug!(uid = %uid, "login expired");
            self.shared.metrics.login_expired();
            self.queue(login_ended(&uid, self.conn.format));
        }
    }

    /// Drops the login and every private subscription.
    pub(in crate::conn) async fn logout(&mut self) {
        self.conn.set_login_end(None);
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
