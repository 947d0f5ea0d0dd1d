//! What the server API reads and steers in the hub (see
//! [`gpush_common::control`]): who is logged in on which connection (for
//! presence), and the orders left for a connection's task.
//!
//! A connection's subscriptions are its task's to change (it knows them and
//! releases bus interest), so the API does not change them here: it leaves
//! an [`Order`] in the hub, flags the connection
//! ([`ConnHandle::ordered`](super::ConnHandle::ordered)) and wakes it; the
//! task carries the orders out in turn, as it does its client's requests.
//! Orders wait in a map beside the connections, not in each connection:
//! an idle connection pays nothing for them.

use super::{ConnHandle, Hub, lock};
use crate::close::Close;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Most orders waiting for one connection; more are refused (the API
/// answer does not count that connection as reached). A task carries its
/// orders out as soon as it is woken, so this is reached only by a
/// connection whose task is stuck, or by a flood of calls for one user.
pub(crate) const MAX_ORDERS: usize = 64;

/// Something the server API asked of one connection. Each order but a
/// disconnect names the user it was for: carried out only while the
/// connection is still logged in as that user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Order {
    /// Close with 4003; the reason for the close frame (empty: the default).
    Disconnect(Box<str>),
    /// End the login (push 10004, reason `logout`).
    Logout { uid: Box<str> },
    /// Subscribe to the topic (push 10008).
    Subscribe {
        uid: Box<str>,
        topic: Box<str>,
        public: bool,
        keep: bool,
    },
    /// Unsubscribe from the topic (push 10009).
    Unsubscribe {
        uid: Box<str>,
        topic: Box<str>,
        public: bool,
    },
}

impl Hub {
    /// Remembers that connection `id` is logged in as `uid` (the
    /// connection's own copy, shared).
    pub(super) fn record_login(&self, id: u64, uid: Arc<str>) {
        lock(&self.logins[id as usize % self.logins.len()]).insert(id, uid);
    }

    /// Forgets connection `id`'s login.
    pub(super) fn forget_login(&self, id: u64) {
        lock(&self.logins[id as usize % self.logins.len()]).remove(&id);
    }

    /// The uid connection `id` is logged in as.
    fn login_of(&self, id: u64) -> Option<Arc<str>> {
        lock(&self.logins[id as usize % self.logins.len()])
            .get(&id)
            .cloned()
    }

    /// The connections logged in as `uid` here.
    pub(crate) fn user_connections(&self, uid: &str) -> Vec<Arc<ConnHandle>> {
        self.users.members(uid)
    }

    /// How many connections are logged in as `uid` here.
    pub(crate) fn user_connection_count(&self, uid: &str) -> u64 {
        self.users.len(uid) as u64
    }

    /// Who is subscribed to public `topic` here: (uid, connections) for
    /// the logged-in (only `only` when not empty), and the count of
    /// connections without a login (0 when `only` is given).
    pub(crate) fn presence(&self, topic: &str, only: &str) -> (Vec<(String, u64)>, u64) {
        let mut users = HashMap::<Arc<str>, u64>::new();
        let mut anonymous = 0;
        for id in self.topics.ids(topic) {
            match self.login_of(id) {
                Some(uid) if only.is_empty() || &*uid == only => {
                    *users.entry(uid).or_default() += 1;
                }
                Some(_) => {}
                None if only.is_empty() => anonymous += 1,
                None => {}
            }
        }
        let users = users
            .into_iter()
            .map(|(uid, n)| (uid.to_string(), n))
            .collect();
        (users, anonymous)
    }

    /// Public topics starting with `prefix` and their subscriber counts
    /// here, busiest first, at most `limit`; and whether more matched.
    pub(crate) fn topic_list(&self, prefix: &str, limit: usize) -> (Vec<(String, u64)>, bool) {
        let mut topics = self.topics.keys(prefix);
        topics.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let truncated = topics.len() > limit;
        topics.truncate(limit);
        (topics, truncated)
    }

    /// Leaves `order` for `conn` and wakes it; false when it already has
    /// [`MAX_ORDERS`] waiting, or has left the hub (closing: a late order
    /// would never be taken). A disconnect also closes its outbox (4003),
    /// so it ends at once, behind what is queued; it always gets in (the
    /// orders waiting before it no longer matter).
    pub(crate) fn order(&self, conn: &ConnHandle, order: Order) -> bool {
        let disconnect = matches!(order, Order::Disconnect(_));
        {
            let mut orders = lock(&self.orders[conn.id as usize % self.orders.len()]);
            let waiting = orders.entry(conn.id).or_default();
            if disconnect {
                waiting.clear();
            } else if waiting.len() >= MAX_ORDERS {
                return false;
            }
            waiting.push(order);
        }
        // `disconnect` removes the connection, then forgets its orders:
        // an order left after both is taken back here.
        if !lock(&self.conns[conn.id as usize % self.conns.len()]).contains_key(&conn.id) {
            self.forget_orders(conn.id);
            return false;
        }
        if disconnect {
            conn.outbox.close(Close::ServerDisconnect);
        } else {
            conn.ordered.store(true, Ordering::Release);
            conn.outbox.wake();
        }
        true
    }

    /// The orders waiting for connection `id`, oldest first.
    pub(crate) fn take_orders(&self, id: u64) -> Vec<Order> {
        lock(&self.orders[id as usize % self.orders.len()])
            .remove(&id)
            .unwrap_or_default()
    }

    /// The close reason of a disconnect order for connection `id`, if one
    /// is waiting (the first one's, when several are).
    pub(crate) fn disconnect_reason(&self, id: u64) -> Option<Box<str>> {
        lock(&self.orders[id as usize % self.orders.len()])
            .get(&id)?
            .iter()
            .find_map(|order| match order {
                Order::Disconnect(reason) => Some(reason.clone()),
                _ => None,
            })
    }

    /// Drops connection `id`'s waiting orders (it closed).
    pub(super) fn forget_orders(&self, id: u64) {
        lock(&self.orders[id as usize % self.orders.len()]).remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::QueueLimits;
    use crate::protocol::WireFormat;

    const LIMITS: QueueLimits = QueueLimits { bytes: 1 << 20 };

    #[test]
    fn presence_counts_users_and_anonymous_subscribers() {
        let hub = Hub::new(4, LIMITS);
        let [a, b, c, d] = [(); 4].map(|_| hub.connect(WireFormat::Json));
        hub.login("ann", &a);
        hub.login("ann", &b);
        hub.login("bob", &c);
        for conn in [&a, &b, &c, &d] {
            hub.subscribe("t", conn, usize::MAX).expect("subscribe");
        }
        let (mut users, anonymous) = hub.presence("t", "");
        users.sort();
        assert_eq!(users, [("ann".into(), 2), ("bob".into(), 1)]);
        assert_eq!(anonymous, 1);
        assert_eq!(hub.presence("t", "bob"), (vec![("bob".into(), 1)], 0));
        hub.logout("ann", a.id);
        let (mut users, anonymous) = hub.presence("t", "");
        users.sort();
        assert_eq!(users, [("ann".into(), 1), ("bob".into(), 1)]);
        assert_eq!(anonymous, 2, "a logged out");
        assert_eq!(hub.user_connection_count("ann"), 1);
        assert_eq!(hub.presence("none", ""), (vec![], 0));
    }

    #[test]
    fn topics_are_listed_busiest_first_under_a_prefix() {
        let hub = Hub::new(4, LIMITS);
        let [a, b] = [(); 2].map(|_| hub.connect(WireFormat::Json));
        for (topic, conns) in [
            ("chat.1", vec![&a]),
            ("chat.2", vec![&a, &b]),
            ("x", vec![&b]),
        ] {
            for conn in conns {
                hub.subscribe(topic, conn, usize::MAX).expect("subscribe");
            }
        }
        assert_eq!(
            hub.topic_list("chat.", 10),
            (vec![("chat.2".into(), 2), ("chat.1".into(), 1)], false)
        );
        assert_eq!(hub.topic_list("", 1), (vec![("chat.2".into(), 2)], true));
    }

    #[test]
    fn orders_wait_bounded_and_a_disconnect_closes() {
        let hub = Hub::new(2, LIMITS);
        let a = hub.connect(WireFormat::Json);
        let logout = || Order::Logout { uid: "ann".into() };
        for _ in 0..MAX_ORDERS {
            assert!(hub.order(&a, logout()));
        }
        assert!(!hub.order(&a, logout()), "the bound holds");
        let b = hub.connect(WireFormat::Json);
        for _ in 0..MAX_ORDERS {
            assert!(hub.order(&b, logout()));
        }
        assert!(
            hub.order(&b, Order::Disconnect("full".into())),
            "a disconnect always gets in"
        );
        assert_eq!(b.outbox.closing(), Some(Close::ServerDisconnect));
        assert_eq!(hub.take_orders(b.id), [Order::Disconnect("full".into())]);
        hub.disconnect(b.id);
        assert!(!hub.order(&b, logout()), "not for a connection that left");
        assert!(hub.take_orders(b.id).is_empty(), "nothing left behind");
        assert!(a.ordered.load(Ordering::Acquire));
        assert_eq!(hub.take_orders(a.id).len(), MAX_ORDERS);
        assert!(hub.take_orders(a.id).is_empty());
        assert!(hub.order(&a, Order::Disconnect("banned".into())));
        assert_eq!(a.outbox.closing(), Some(Close::ServerDisconnect));
        assert_eq!(hub.disconnect_reason(a.id).as_deref(), Some("banned"));
        hub.disconnect(a.id);
        assert_eq!(
            hub.disconnect_reason(a.id),
            None,
            "forgotten with the connection"
        );
    }
}
