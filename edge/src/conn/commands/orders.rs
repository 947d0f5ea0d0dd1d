//! The server API's orders (see `hub/control.rs`), carried out by the
//! connection's task as it carries out its client's requests: a logout
//! (push 10004, reason `logout`), a subscribe (push 10008) or an
//! unsubscribe (push 10009) of a public or private topic. An order for a
//! user the connection is no longer logged in as is dropped. A disconnect
//! needs nothing here: it closed the outbox.

use super::Origin;
use crate::conn::Session;
use crate::conn::io::Socket;
use crate::hub::Order;
use crate::protocol::push::{LOGIN_ENDED_LOGOUT, login_ended};
use std::sync::atomic::Ordering;

impl<S: Socket> Session<S> {
    /// Carries out the orders waiting in the hub for this connection.
    pub(in crate::conn) async fn carry_out_orders(&mut self) {
        // Cleared before taking: an order left meanwhile sets it again.
        self.conn.ordered.store(false, Ordering::Release);
        for order in self.shared.hub.take_orders(self.conn.id) {
            let for_me = |uid: &str| self.uid.as_deref() == Some(uid);
            match order {
                Order::Disconnect(_) => {}
                Order::Logout { uid } if for_me(&uid) => {
                    self.logout().await;
                    self.queue(login_ended(&uid, LOGIN_ENDED_LOGOUT, self.conn.format));
                }
                Order::Subscribe {
                    uid,
                    topic,
                    public,
                    keep,
                } if for_me(&uid) => {
                    let origin = Origin::Server { keep };
                    let topic = String::from(topic);
                    let refused = if public {
                        self.subscribe(topic, origin, None).await
                    } else {
                        self.subscribe_private(topic, origin, None).await
                    };
                    if !refused.is_empty() {
                        // At a limit (subscriptions, topics): the client
                        // is told nothing, as it asked nothing.
                        tracing::debug!("server subscribe refused");
                    }
                }
                Order::Unsubscribe { uid, topic, public } if for_me(&uid) => {
                    let origin = Origin::Server { keep: false };
                    let topic = String::from(topic);
                    let reply = if public {
                        self.unsubscribe(topic, origin).await
                    } else {
                        self.unsubscribe_private(topic, origin)
                    };
                    self.queue(reply);
                }
                _ => tracing::debug!("order for a user no longer logged in here dropped"),
            }
        }
    }
}
