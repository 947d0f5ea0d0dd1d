//! What one connection is subscribed to, kept on the connection so that
//! leaving can undo it; the hub's indexes hold the other direction.

/// A connection's subscriptions. There are few (at most
/// `max_subscriptions`), so a vector costs less memory than a hash set and
/// is as fast to search.
#[derive(Debug, Default)]
pub(super) struct Topics(pub(super) Vec<Box<str>>);

impl Topics {
    pub(super) fn contains(&self, topic: &str) -> bool {
        self.0.iter().any(|t| &**t == topic)
    }

    pub(super) fn insert(&mut self, topic: &str) {
        self.0.push(topic.into());
    }

    pub(super) fn remove(&mut self, topic: &str) -> bool {
        match self.0.iter().position(|t| &**t == topic) {
            Some(at) => {
                self.0.swap_remove(at);
                true
            }
            None => false,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}
