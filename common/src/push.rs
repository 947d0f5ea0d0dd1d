//! A push message and the rules for topic and uid names.

use bytes::Bytes;
use std::time::{SystemTime, UNIX_EPOCH};

/// Default maximum length of a topic or uid, in bytes.
pub const DEFAULT_MAX_NAME_LEN: usize = 256;

/// One message to deliver, as accepted by the push API.
///
/// Which connections receive it follows from which of `uid` and `topic` are
/// empty; see [`Route`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// User the message is for; empty for public and everyone pushes.
    pub uid: String,
    /// Topic the message is for; empty for everyone and user-wide pushes.
    pub topic: String,
    /// The payload, delivered unchanged.
    pub data: Bytes,
    /// When the push API accepted it, in microseconds since the Unix epoch.
    /// Used for push-to-write latency; 0 when unknown.
    pub sent_at_us: u64,
    /// Its position in its history stream (see [`crate::history`]); 0
    /// when it has none (pushes to everyone, history off, or not yet
    /// kept). Not part of the bus envelope: a cluster edge learns it from
    /// JetStream's headers.
    pub offset: u64,
}

/// Where a push goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// uid = "" and topic = "": every connection on every edge.
    Everyone,
    /// uid = "" and topic = T: subscribers of public topic T.
    Topic(&'a str),
    /// uid = U: connections logged in as U; with `topic` = Some(T) only
    /// those subscribed to private topic T, with None all of them.
    User {
        /// Their login uid.
        uid: &'a str,
        /// The private topic, or None for every connection of the user.
        topic: Option<&'a str>,
    },
}

impl Push {
    /// A push stamped with the current time.
    pub fn new(uid: impl Into<String>, topic: impl Into<String>, data: Bytes) -> Self {
        Self {
            uid: uid.into(),
            topic: topic.into(),
            data,
            sent_at_us: now_us(),
            offset: 0,
        }
    }

    /// The route this push takes.
    pub fn route(&self) -> Route<'_> {
        match (self.uid.is_empty(), self.topic.is_empty()) {
            (true, true) => Route::Everyone,
            (true, false) => Route::Topic(&self.topic),
            (false, true) => Route::User {
                uid: &self.uid,
                topic: None,
            },
            (false, false) => Route::User {
                uid: &self.uid,
                topic: Some(&self.topic),
            },
        }
    }
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Why a topic or uid was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty where one is required.
    #[error("must not be empty")]
    Empty,
    /// The name is longer than the configured maximum.
    #[error("is {len} bytes long, the maximum is {max}")]
    TooLong {
        /// Length of the refused name, in bytes.
        len: usize,
        /// `max_name_len` of the config that refused it.
        max: usize,
    },
    /// The name contains a control character (such as NUL or newline).
    #[error("contains a control character")]
    ControlChar,
}

/// Checks a non-empty topic or uid.
///
/// Any printable text is allowed, including `.`, `*`, `>` and spaces: the
/// [`subject`](crate::subject) mapping escapes them, so they never act as NATS
/// wildcards. Control characters are refused because no client means them.
pub fn validate_name(name: &str, max_len: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > max_len {
        return Err(NameError::TooLong {
            len: name.len(),
            max: max_len,
        });
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::ControlChar);
    }
    Ok(())
}

/// Like [`validate_name`], but the empty name (meaning "no topic" or "no
/// user" in a push) is accepted.
pub fn validate_optional_name(name: &str, max_len: usize) -> Result<(), NameError> {
    if name.is_empty() {
        Ok(())
    } else {
        validate_name(name, max_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_follow_empty_fields() {
        let p = |u: &str, t: &str| Push::new(u, t, Bytes::new());
        assert_eq!(p("", "").route(), Route::Everyone);
        assert_eq!(p("", "news").route(), Route::Topic("news"));
        assert_eq!(
            p("42", "").route(),
            Route::User {
                uid: "42",
                topic: None
            }
        );
        assert_eq!(
            p("42", "inbox").route(),
            Route::User {
                uid: "42",
                topic: Some("inbox")
            }
        );
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(validate_name("", 8), Err(NameError::Empty));
        assert_eq!(
            validate_name("123456789", 8),
            Err(NameError::TooLong { len: 9, max: 8 })
        );
        assert_eq!(validate_name("a\nb", 8), Err(NameError::ControlChar));
        assert_eq!(validate_name("a\0", 8), Err(NameError::ControlChar));
        for ok in ["a.b", "*", ">", "a b", "ä漢", "x_2F"] {
            assert_eq!(validate_name(ok, 64), Ok(()), "{ok}");
        }
        assert_eq!(validate_optional_name("", 8), Ok(()));
    }
}
