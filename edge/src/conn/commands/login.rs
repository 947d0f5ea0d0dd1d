//! Login and logout (codes 3 and 4): the token checked by
//! [`crate::auth`], the user recorded in the hub, and the user's bucket
//! followed by the bus.
//!
//! A login lasts until its token expires plus `auth.expiry_leeway`,
//! recorded in [`ConnHandle::login_ends`](crate::hub::ConnHandle::login_ends).
//! A login for the uid already logged in is a refresh: a new end, the
//! subscriptions kept. When the edge's keepalive sweep finds the end
//! past, it wakes the connection, which logs out and sends push 10004.

use super::recovery::Join;
use crate::conn::Session;
use crate::conn::io::Socket;
use crate::hub::NotAdded;
use crate::interest::Key;
use crate::protocol::push::{LOGIN_ENDED_EXPIRED, login_ended};
use crate::protocol::request::Since;
use crate::protocol::{Code, Reply};
use bytes::Bytes;
use gpush_common::history::StreamKey;
use gpush_common::subject::user_bucket;
use serde_json::Value;

impl<S: Socket> Session<S> {
    /// Logs in; the reply (and, with `since`, the user-wide pushes missed)
    /// are queued here, in order with the user's pushes.
    pub(super) async fn login(
        &mut self,
        token: Value,
        id: Option<&Value>,
        since: Option<Since>,
    ) -> Bytes {
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
        let hub = self.shared.hub.clone();
        let key = StreamKey::User(&uid);
        let interest = self.shared.interest.clone();
        interest
            .follow(Key::UserBucket(user_bucket(&uid)), key)
            .await;
        let follower = interest.follower();
        let mut join = Join::new(&hub.history, key, since);
        let format = self.conn.format;
        let reply = |offset: u64, join: &Join| {
            let mut reply = Reply::new(Code::LoggedIn)
                .uid(&uid)
                .expires(login.expires)
                .id(id)
                .recovered(join.recovered());
            if let Some(epoch) = &join.epoch {
                reply = reply.position(offset, epoch);
            }
            reply.frame(format)
        };
        if self.uid.as_deref() == Some(uid.as_str()) {
            // A refresh, even when the sweep just found the old end past.
            self.conn.set_login_end(ends);
            hub.with_user_offset(&uid, |offset| self.queue(reply(offset.unwrap_or(0), &join)));
            return Bytes::new();
        }
        self.logout().await;
        let max_recover = self.shared.config.history.max_recover;
        let max_conns = self.shared.config.max_connections_per_user;
        if let Some(elsewhere) = self.shared.presence.connections_elsewhere(&uid)
            && hub.user_connection_count(&uid) + elsewhere >= max_conns as u64
        {
            self.shared.metrics.login_crowded();
            return Reply::new(Code::LimitReached)
                .uid(&uid)
                .id(id)
                .detail(&format!(
                    "at most {max_conns} connections per user in the cluster \
                     (max_connections_per_user, scope cluster)"
                ))
                .frame(format);
        }
        // One copy of the uid, shared by the connection and the hub.
        let login_uid: std::sync::Arc<str> = std::sync::Arc::from(uid.as_str());
        loop {
            let expected = join
                .expected(&hub, follower, key, max_recover, |entry| {
                    entry.push.topic.is_empty()
                })
                .await;
            let joined = |offset| self.queue_joined(reply(offset, &join), &join);
            match hub.login_at(&login_uid, &self.conn, max_conns, expected, joined) {
                Ok(_) => break,
                Err(NotAdded::Crowded) => {
                    self.shared.metrics.login_crowded();
                    return Reply::new(Code::LimitReached)
                        .uid(&uid)
                        .id(id)
                        .detail(&format!(
                            "at most {max_conns} connections per user on this edge \
                             (max_connections_per_user)"
                        ))
                        .frame(format);
                }
                Err(_) => {}
            }
        }
        self.uid = Some(login_uid);
        self.presence_login(None, Some(&uid));
        self.conn.set_login_end(ends);
        self.shared
            .interest
            .ensure(Key::UserBucket(user_bucket(&uid)))
            .await;
        Bytes::new()
    }

    /// The sweep found the login past its end: log out, and tell the
    /// client with push 10004 (behind whatever is already queued).
    pub(in crate::conn) async fn end_expired_login(&mut self) {
        let uid = self.uid.clone();
        self.logout().await;
        if let Some(uid) = uid {
            tracing::debug!(uid = %uid, "login expired");
            self.shared.metrics.login_expired();
            self.queue(login_ended(&uid, LOGIN_ENDED_EXPIRED, self.conn.format));
        }
    }

    /// Drops the login and every private subscription.
    pub(in crate::conn) async fn logout(&mut self) {
        self.conn.set_login_end(None);
        let Some(uid) = self.uid.take() else { return };
        self.presence_login(Some(&uid), None);
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
