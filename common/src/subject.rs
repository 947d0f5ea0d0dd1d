//! NATS subjects for each [`Route`].
//!
//! Layout, with the default prefix `gpush`:
//! - `gpush.all`: everyone pushes;
//! - `gpush.t.<topic>`: public topic pushes;
//! - `gpush.u.<uid>`: every push for one user (private topic or user-wide;
//!   the edge filters by the connection's private subscriptions).
//!
//! A name is escaped into a single subject token: ASCII letters, digits, `-`
//! and `_` stay as they are, every other byte becomes `%XX`. The escape is
//! injective (`%` itself is escaped), so two different names never share a
//! subject, and the result never contains `.`, `*`, `>` or white space, so a
//! name can never act as a wildcard or span tokens.

use crate::push::Route;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Default subject prefix.
pub const DEFAULT_PREFIX: &str = "gpush";

/// Bytes escaped in a subject token: all but ASCII alphanumerics, `-`, `_`.
const TOKEN_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_');

/// Builds subjects under one prefix.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

/// The prefix is not a literal NATS subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subject prefix {0:?} must be dot-separated tokens of ASCII letters, digits, '-' and '_'")]
pub struct BadPrefix(pub String);

impl Default for Subjects {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl Subjects {
    /// Subjects under `prefix`, which must be a literal subject (no wildcards).
    pub fn new(prefix: &str) -> Result<Self, BadPrefix> {
        let valid = prefix.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        if valid {
            Ok(Self {
                prefix: prefix.to_owned(),
            })
        } else {
            Err(BadPrefix(prefix.to_owned()))
        }
    }

    /// The subject for everyone pushes.
    pub fn everyone(&self) -> String {
        format!("{}.all", self.prefix)
    }

    /// The subject for public topic `topic`.
    pub fn topic(&self, topic: &str) -> String {
        format!("{}.t.{}", self.prefix, escape(topic))
    }

    /// The subject for every push to user `uid`.
    pub fn user(&self, uid: &str) -> String {
        format!("{}.u.{}", self.prefix, escape(uid))
    }

    /// The subject a push with this route is published under.
    pub fn for_route(&self, route: Route<'_>) -> String {
        match route {
            Route::Everyone => self.everyone(),
            Route::Topic(topic) => self.topic(topic),
            Route::User { uid, .. } => self.user(uid),
        }
    }
}

/// Escapes a name into one subject token. See the module docs.
pub fn escape(name: &str) -> String {
    utf8_percent_encode(name, TOKEN_ESCAPE).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let s = Subjects::default();
        assert_eq!(s.everyone(), "gpush.all");
        assert_eq!(s.topic("news"), "gpush.t.news");
        assert_eq!(s.user("u-1_x"), "gpush.u.u-1_x");
        assert_eq!(
            s.for_route(Route::User {
                uid: "7",
                topic: Some("t")
            }),
            "gpush.u.7"
        );
    }

    #[test]
    fn wildcards_and_separators_are_escaped() {
        let s = Subjects::default();
        for name in [
            "*", ">", "a.b", "a.*", "a.>", "a b", "a\tb", "%2E", ".", "ä",
        ] {
            let subject = s.topic(name);
            let token = subject.strip_prefix("gpush.t.").expect("prefix");
            assert!(
                !token.contains(['.', '*', '>', ' ', '\t']),
                "{name:?} -> {subject}"
            );
            assert!(!token.is_empty());
        }
        assert_eq!(s.topic("a.b"), "gpush.t.a%2Eb");
        assert_eq!(s.topic(">"), "gpush.t.%3E");
    }

    #[test]
    fn escaping_is_injective_on_tricky_pairs() {
        let pairs = [("a.b", "a%2Eb"), ("%", "%25"), ("a b", "a+b"), ("*", "%2A")];
        for (x, y) in pairs {
            assert_ne!(escape(x), escape(y), "{x:?} vs {y:?}");
        }
    }

    #[test]
    fn prefix_must_be_literal() {
        assert!(Subjects::new("gpush").is_ok());
        assert!(Subjects::new("tenant-1.gpush").is_ok());
        for bad in ["", "a..b", "a.*", ">", "a b", "a."] {
            assert!(Subjects::new(bad).is_err(), "{bad:?}");
        }
    }
}
