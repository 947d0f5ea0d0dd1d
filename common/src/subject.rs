//! NATS subjects for each [`Route`].
//!
//! Layout, with the default prefix `gpush`:
//! - `gpush.all`: everyone pushes;
//! - `gpush.t.<bucket>.<topic>`: public topic pushes. `<bucket>` is
//!   [`topic_bucket`] of the topic.
//! - `gpush.u.<bucket>.<uid>`: every push for one user (private topic or
//!   user-wide; the edge filters by the connection's private
//!   subscriptions). `<bucket>` is [`user_bucket`] of the uid.
//! - `gpush.ctl`: the server API's commands to every edge (request/reply,
//!   see [`crate::control`]).
//! - `gpush.pr.t.<topic>`: the presence changes of a public topic, as each
//!   edge publishes its own (edges with a subscriber of the topic listen);
//!   `gpush.pr.u`: each edge's changes of its logged-in users;
//!   `gpush.pr.hb`: every edge's heartbeat (see the edge's `presence`).
//! - `gpush.events.online`: user online/offline events for backends.
//!
//! Edges subscribe to topics and users by bucket (`gpush.t.<bucket>.*` for
//! the buckets that hold a topic with a local subscriber,
//! `gpush.u.<bucket>.*` for those that hold a local user) and pick the
//! topic or user out of the envelope. A NATS subscription costs the client
//! a few KiB (async-nats allocates its channel's first block of 32
//! messages when it subscribes), so one per topic or logged-in user would
//! cost more than the connection itself; [`TOPIC_BUCKETS`] and
//! [`USER_BUCKETS`] bound that cost per edge instead. The price: an edge
//! also receives the pushes of topics that share a bucket with one of its
//! own and drops them. The `*` is gpush's own: it always stands for one
//! escaped topic or uid token, never a name.
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

/// The longest subject gpush builds, in bytes. A NATS server refuses a
/// control line (`PUB <subject> <size>`, `SUB <subject> <sid>`,
/// `MSG <subject> <sid> <size>`) over its `max_control_line`, 4,096 bytes
/// by default, and closes the connection; the client then resends its
/// subscriptions on every reconnect and is closed again. This leaves 256
/// bytes of that line for the verb, a reply inbox, the sid and the sizes.
pub const MAX_SUBJECT_LEN: usize = 4096 - 256;

/// Bytes a name can take in a subject per byte of the name: every escaped
/// byte becomes `%XX`.
const ESCAPE_GROWTH: usize = 3;

/// Number of user buckets. Part of the subject layout: ingress and every
/// edge must agree on it, so it is a constant, not a setting.
pub const USER_BUCKETS: u16 = 256;

/// Number of topic buckets. Part of the subject layout like
/// [`USER_BUCKETS`]. An edge whose clients want `k` distinct topics holds
/// at most `min(k, TOPIC_BUCKETS)` topic subscriptions, and receives about
/// `k / TOPIC_BUCKETS` of all topic pushes (all of them once `k` is well
/// past it). Three digits, like a user bucket, so the longest subject
/// stays a user's (see [`Subjects::longest`]).
pub const TOPIC_BUCKETS: u16 = 1000;

/// FNV-1a of a name's bytes: stable across processes, versions and
/// machines (changing it would split a running cluster).
fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The bucket of a uid: [FNV-1a](fnv1a) of its bytes, modulo
/// [`USER_BUCKETS`].
pub fn user_bucket(uid: &str) -> u16 {
    (fnv1a(uid) % u64::from(USER_BUCKETS)) as u16
}

/// The bucket of a public topic: [FNV-1a](fnv1a) of its bytes, modulo
/// [`TOPIC_BUCKETS`].
pub fn topic_bucket(topic: &str) -> u16 {
    (fnv1a(topic) % u64::from(TOPIC_BUCKETS)) as u16
}

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

    /// The prefix every subject starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The subject for everyone pushes.
    pub fn everyone(&self) -> String {
        format!("{}.all", self.prefix)
    }

    /// The subject for public topic `topic`.
    pub fn topic(&self, topic: &str) -> String {
        self.build(&["t", &topic_bucket(topic).to_string()], topic)
    }

    /// The subject for every push to user `uid`.
    pub fn user(&self, uid: &str) -> String {
        self.build(&["u", &user_bucket(uid).to_string()], uid)
    }

    /// `<prefix>.<tokens...>.<escaped name>` in one allocation: this runs
    /// once per published message.
    fn build(&self, tokens: &[&str], name: &str) -> String {
        let tokens_len: usize = tokens.iter().map(|t| t.len() + 1).sum();
        let mut subject =
            String::with_capacity(self.prefix.len() + tokens_len + 1 + name.len() * 3);
        subject.push_str(&self.prefix);
        for token in tokens {
            subject.push('.');
            subject.push_str(token);
        }
        subject.push('.');
        subject.extend(utf8_percent_encode(name, TOKEN_ESCAPE));
        subject
    }

    /// The longest subject a name of `name_len` bytes can give: a topic or
    /// user subject (`<prefix>.t.<bucket>.<name>`,
    /// `<prefix>.u.<bucket>.<name>`, longer than a presence subject) of a
    /// name whose every byte is escaped.
    pub fn longest(&self, name_len: usize) -> usize {
        let bucket_digits = (USER_BUCKETS - 1)
            .to_string()
            .len()
            .max((TOPIC_BUCKETS - 1).to_string().len());
        self.prefix.len() + ".u.".len() + bucket_digits + 1 + name_len * ESCAPE_GROWTH
    }

    /// The largest `max_name_len` whose subjects all stay within
    /// [`MAX_SUBJECT_LEN`] under this prefix.
    pub fn max_name_len(&self) -> usize {
        MAX_SUBJECT_LEN.saturating_sub(self.longest(0)) / ESCAPE_GROWTH
    }

    /// A config problem when names of `max_name_len` bytes (config key
    /// `key`) could give subjects over [`MAX_SUBJECT_LEN`] under this
    /// prefix.
    pub fn name_len_problem(&self, key: &str, max_name_len: usize) -> Option<String> {
        let max = self.max_name_len();
        (max_name_len > max).then(|| {
            format!(
                "{key} must be <= {max} with subject_prefix {:?}: a name escaped into a NATS \
                 subject takes up to 3 bytes per byte, and a subject over {MAX_SUBJECT_LEN} \
                 bytes would break the NATS connection",
                self.prefix
            )
        })
    }

    /// Whether a message that arrived on `subject` may carry a push with
    /// `route`: the subject is exactly the one the route is published
    /// under. A publisher allowed on topic subjects only must not make an
    /// edge deliver a private or everyone push. Compares without building
    /// the subject (this runs for every bus message).
    pub fn carries(&self, subject: &str, route: Route<'_>) -> bool {
        let Some(rest) = subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
        else {
            return false;
        };
        // `<kind>.<bucket>.` must be the name's own bucket.
        let in_bucket = |kind: &str, bucket: u16| {
            let rest = rest.strip_prefix(kind)?.strip_prefix('.')?;
            let (token, rest) = rest.split_once('.')?;
            // The bucket as written by `build`: digits, no leading zero.
            let canonical = token.bytes().all(|b| b.is_ascii_digit())
                && (token == "0" || !token.starts_with('0'));
            (canonical && token.parse::<u16>().ok() == Some(bucket)).then_some(rest)
        };
        let (rest, name) = match route {
            Route::Everyone => return rest == "all",
            Route::Topic(topic) => (in_bucket("t", topic_bucket(topic)), topic),
            Route::User { uid, .. } => (in_bucket("u", user_bucket(uid)), uid),
        };
        let Some(mut token) = rest else {
            return false;
        };
        for chunk in utf8_percent_encode(name, TOKEN_ESCAPE) {
            match token.strip_prefix(chunk) {
                Some(after) => token = after,
                None => return false,
            }
        }
        token.is_empty()
    }

    /// The subject every edge takes the server API's commands on.
    pub fn control(&self) -> String {
        format!("{}.ctl", self.prefix)
    }

    /// The subject of public topic `topic`'s presence changes.
    pub fn presence_topic(&self, topic: &str) -> String {
        self.build(&["pr", "t"], topic)
    }

    /// The subject of the edges' changes of their logged-in users.
    pub fn presence_users(&self) -> String {
        format!("{}.pr.u", self.prefix)
    }

    /// The subject of the edges' presence heartbeats.
    pub fn presence_heartbeat(&self) -> String {
        format!("{}.pr.hb", self.prefix)
    }

    /// The subject of user online/offline events.
    pub fn online_events(&self) -> String {
        format!("{}.events.online", self.prefix)
    }

    /// Every events subject (what the events stream keeps).
    pub fn events(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    /// The subscription that receives every user subject of `bucket`.
    pub fn user_bucket(&self, bucket: u16) -> String {
        format!("{}.u.{bucket}.*", self.prefix)
    }

    /// The subscription that receives every topic subject of `bucket`.
    pub fn topic_bucket(&self, bucket: u16) -> String {
        format!("{}.t.{bucket}.*", self.prefix)
    }

    /// The stream a live subject carries: `Some((true, topic))` for a
    /// public topic's subject, `Some((false, uid))` for a user's, None for
    /// the everyone subject or anything else. The inverse of
    /// [`Self::topic`] and [`Self::user`] (for messages that carry no
    /// envelope, such as history markers).
    pub fn stream_of(&self, subject: &str) -> Option<(bool, String)> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('.')?;
        let (topic, rest) = match rest.strip_prefix("t.") {
            Some(rest) => (true, rest),
            None => (false, rest.strip_prefix("u.")?),
        };
        let (bucket, escaped) = rest.split_once('.')?;
        let _: u16 = bucket.parse().ok()?;
        if escaped.is_empty() || escaped.contains('.') {
            return None;
        }
        let name = percent_encoding::percent_decode_str(escaped)
            .decode_utf8()
            .ok()?
            .into_owned();
        let back = if topic {
            self.topic(&name)
        } else {
            self.user(&name)
        };
        (back == subject).then_some((topic, name))
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
        assert_eq!(
            s.topic("news"),
            format!("gpush.t.{}.news", topic_bucket("news"))
        );
        assert_eq!(
            s.topic_bucket(topic_bucket("news")),
            format!("gpush.t.{}.*", topic_bucket("news"))
        );
        let bucket = user_bucket("u-1_x");
        assert_eq!(s.user("u-1_x"), format!("gpush.u.{bucket}.u-1_x"));
        assert_eq!(s.user_bucket(bucket), format!("gpush.u.{bucket}.*"));
        assert_eq!(s.presence_topic("chat.1"), "gpush.pr.t.chat%2E1");
        assert_eq!(s.presence_users(), "gpush.pr.u");
        assert_eq!(s.presence_heartbeat(), "gpush.pr.hb");
        assert_eq!(s.online_events(), "gpush.events.online");
        assert_eq!(s.events(), "gpush.events.>");
        assert_eq!(
            s.for_route(Route::User {
                uid: "7",
                topic: Some("t")
            }),
            format!("gpush.u.{}.7", user_bucket("7"))
        );
    }

    #[test]
    fn wildcards_and_separators_are_escaped() {
        let s = Subjects::default();
        for name in [
            "*", ">", "a.b", "a.*", "a.>", "a b", "a\tb", "%2E", ".", "ä",
        ] {
            let subject = s.topic(name);
            let bucket = format!("gpush.t.{}.", topic_bucket(name));
            let token = subject.strip_prefix(&bucket).expect("prefix");
            assert!(
                !token.contains(['.', '*', '>', ' ', '\t']),
                "{name:?} -> {subject}"
            );
            assert!(!token.is_empty());
        }
        assert_eq!(
            s.topic("a.b"),
            format!("gpush.t.{}.a%2Eb", topic_bucket("a.b"))
        );
        assert_eq!(s.topic(">"), format!("gpush.t.{}.%3E", topic_bucket(">")));
    }

    #[test]
    fn escaping_is_injective_on_tricky_pairs() {
        let pairs = [("a.b", "a%2Eb"), ("%", "%25"), ("a b", "a+b"), ("*", "%2A")];
        for (x, y) in pairs {
            assert_ne!(escape(x), escape(y), "{x:?} vs {y:?}");
        }
    }

    #[test]
    fn user_buckets_are_stable_and_spread() {
        // Fixed values: changing the hash would split a running cluster.
        assert_eq!(user_bucket(""), (0xcbf2_9ce4_8422_2325_u64 % 256) as u16);
        assert_eq!(user_bucket("a"), (0xaf63_dc4c_8601_ec8c_u64 % 256) as u16);
        let mut seen = [0u32; USER_BUCKETS as usize];
        for i in 0..25_600 {
            seen[usize::from(user_bucket(&format!("user-{i}")))] += 1;
        }
        assert!(seen.iter().all(|&n| (50..=150).contains(&n)), "{seen:?}");
    }

    #[test]
    fn topic_buckets_are_stable_and_spread() {
        // Fixed values: changing the hash would split a running cluster.
        assert_eq!(topic_bucket(""), (0xcbf2_9ce4_8422_2325_u64 % 1000) as u16);
        assert_eq!(topic_bucket("a"), (0xaf63_dc4c_8601_ec8c_u64 % 1000) as u16);
        assert_eq!(topic_bucket("news"), topic_bucket("news"));
        let mut seen = vec![0u32; usize::from(TOPIC_BUCKETS)];
        for i in 0..100_000 {
            seen[usize::from(topic_bucket(&format!("topic-{i}")))] += 1;
        }
        assert!(seen.iter().all(|&n| (50..=150).contains(&n)), "{seen:?}");
    }

    #[test]
    fn topic_subject_is_one_escaped_token_under_the_bucket() {
        let s = Subjects::default();
        for topic in ["a.b", "*", ">", "a b", "news"] {
            let subject = s.topic(topic);
            let tokens: Vec<&str> = subject.split('.').collect();
            assert_eq!(tokens.len(), 4, "{subject}");
            assert_eq!(tokens[1], "t");
            assert_eq!(tokens[2], topic_bucket(topic).to_string());
            assert_eq!(tokens[3], escape(topic));
            assert_eq!(s.stream_of(&subject), Some((true, topic.to_owned())));
        }
    }

    #[test]
    fn a_topic_subject_in_another_bucket_carries_nothing() {
        let s = Subjects::default();
        let news = Route::Topic("news");
        let bucket = topic_bucket("news");
        let other = (bucket + 1) % TOPIC_BUCKETS;
        for subject in [
            format!("gpush.t.{other}.news"),
            format!("gpush.t.0{bucket}.news"),
            format!("gpush.t.+{bucket}.news"),
            "gpush.t.news".to_owned(),
            format!("gpush.t.{bucket}"),
            format!("gpush.t.{bucket}.news.x"),
            format!("gpush.u.{bucket}.news"),
        ] {
            assert!(!s.carries(&subject, news), "{subject}");
            assert_eq!(s.stream_of(&subject), None, "{subject}");
        }
        assert!(s.carries(&format!("gpush.t.{bucket}.news"), news));
    }

    #[test]
    fn user_subject_is_one_escaped_token_under_the_bucket() {
        let s = Subjects::default();
        for uid in ["a.b", "*", ">", "a b"] {
            let subject = s.user(uid);
            let tokens: Vec<&str> = subject.split('.').collect();
            assert_eq!(tokens.len(), 4, "{subject}");
            assert_eq!(tokens[2], user_bucket(uid).to_string());
            assert_eq!(tokens[3], escape(uid));
        }
    }

    #[test]
    fn a_subject_carries_only_its_own_route() {
        let s = Subjects::new("tenant-1.gpush").expect("prefix");
        let alice = Route::User {
            uid: "alice",
            topic: Some("inbox"),
        };
        let routes = [
            Route::Everyone,
            Route::Topic("news"),
            Route::Topic("new"),
            Route::Topic("a.b"),
            alice,
            Route::User {
                uid: "alice",
                topic: None,
            },
            Route::User {
                uid: "bob",
                topic: None,
            },
        ];
        for route in routes {
            let own = s.for_route(route);
            assert!(s.carries(&own, route), "{own} must carry {route:?}");
            for other in routes {
                let carried = s.carries(&s.for_route(other), route);
                assert_eq!(carried, own == s.for_route(other), "{other:?} vs {route:?}");
            }
        }
        let news = topic_bucket("news");
        for subject in [
            format!("gpush.t.{news}.news"),
            format!("tenant-1.gpush.t.{news}.news.x"),
            format!("tenant-1.gpush.t.{news}."),
            "tenant-1.gpush.t.news".to_owned(),
            String::new(),
        ] {
            assert!(!s.carries(&subject, Route::Topic("news")), "{subject}");
        }
        let alice_bucket = user_bucket("alice");
        assert!(!s.carries(&format!("tenant-1.gpush.t.{alice_bucket}.alice"), alice));
    }

    #[test]
    fn longest_names_fit_the_nats_control_line() {
        for prefix in ["gpush", "a-rather-long.tenant-name.gpush"] {
            let s = Subjects::new(prefix).expect("prefix");
            let max = s.max_name_len();
            // Every byte escaped: the worst case.
            let name = "%".repeat(max);
            assert!(s.user(&name).len() <= s.longest(max), "{prefix}");
            assert!(s.user(&name).len() <= MAX_SUBJECT_LEN, "{prefix}");
            assert!(s.topic(&name).len() <= MAX_SUBJECT_LEN, "{prefix}");
            assert!(s.presence_topic(&name).len() <= s.longest(max), "{prefix}");
            assert!(
                s.longest(max + 1) > MAX_SUBJECT_LEN,
                "{prefix}: {max} is the largest"
            );
        }
        assert_eq!(Subjects::default().max_name_len(), 1276);
    }

    #[test]
    fn prefix_must_be_literal() {
        assert!(Subjects::new("gpush").is_ok());
        assert!(Subjects::new("tenant-1.gpush").is_ok());
        for bad in ["", "a..b", "a.*", ">", "a b", "a."] {
            assert!(Subjects::new(bad).is_err(), "{bad:?}");
        }
    }

    /// Property tests of the name → subject mapping over arbitrary Unicode
    /// names. Names are non-empty: an empty uid or topic selects another
    /// route (see [`Route`]), it is never escaped into a subject.
    mod properties {
        use super::*;
        use percent_encoding::percent_decode_str;
        use proptest::prelude::*;

        /// Characters that stress the escape (separators, wildcards, white
        /// space, control characters, `%` and what may follow it, and the
        /// unescaped set), mixed with any Unicode scalar value.
        fn tricky_char() -> impl Strategy<Value = char> {
            prop_oneof![
                2 => any::<char>(),
                3 => prop::sample::select(vec![
                    '.', '*', '>', '%', ' ', '\t', '\n', '\r', '\0', '\u{7f}', '\u{85}',
                    '\u{a0}', '\u{2028}', '\u{3000}', '\u{feff}', '2', '5', 'E', 'e', 'A',
                    'a', '-', '_', '+', 'ä', '漢', '🦀',
                ]),
            ]
        }

        /// A non-empty name of arbitrary characters.
        fn name() -> impl Strategy<Value = String> {
            prop::collection::vec(tricky_char(), 1..24).prop_map(String::from_iter)
        }

        /// A short name over a tiny alphabet, so that two of them often
        /// differ by one escape-like detail (`a.b` / `a%2Eb` / `a%2eb`).
        fn near_name() -> impl Strategy<Value = String> {
            let alphabet = vec!['.', '%', '2', 'E', 'e', '*', '>', ' ', 'a'];
            prop::collection::vec(prop::sample::select(alphabet), 1..7).prop_map(String::from_iter)
        }

        fn any_name() -> impl Strategy<Value = String> {
            prop_oneof![name(), near_name()]
        }

        fn subjects() -> impl Strategy<Value = Subjects> {
            prop::sample::select(vec!["gpush", "tenant-1.gpush", "a_b.c-d.e"])
                .prop_map(|prefix| Subjects::new(prefix).expect("literal prefix"))
        }

        /// Whether NATS delivers a message on `subject` to a subscription
        /// on `pattern`: `*` matches one token, `>` one or more.
        fn nats_matches(pattern: &str, subject: &str) -> bool {
            let mut pattern = pattern.split('.');
            let mut subject = subject.split('.');
            loop {
                match (pattern.next(), subject.next()) {
                    (Some(">"), Some(_)) => return true,
                    (Some("*"), Some(_)) => {}
                    (Some(p), Some(s)) if p == s => {}
                    (None, None) => return true,
                    _ => return false,
                }
            }
        }

        /// `subject` is `tokens` non-empty tokens of ASCII letters, digits,
        /// `-`, `_` and `%`: no wildcard, white space, control character or
        /// extra separator.
        fn assert_literal(s: &Subjects, subject: &str, tokens: usize) -> Result<(), TestCaseError> {
            let parts: Vec<&str> = subject.split('.').collect();
            let expected = s.prefix.split('.').count() + tokens;
            prop_assert_eq!(parts.len(), expected, "{}", subject);
            for token in parts {
                prop_assert!(!token.is_empty(), "{}", subject);
                prop_assert!(
                    token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_%".contains(&b)),
                    "{}",
                    subject
                );
            }
            Ok(())
        }

        proptest! {
            #[test]
            fn escape_round_trips(name in any_name()) {
                let escaped = escape(&name);
                let decoded = percent_decode_str(&escaped).decode_utf8().ok();
                prop_assert_eq!(decoded.as_deref(), Some(name.as_str()));
            }

            #[test]
            fn distinct_topics_get_distinct_literal_subjects(
                s in subjects(),
                a in any_name(),
                b in any_name(),
            ) {
                let (sa, sb) = (s.topic(&a), s.topic(&b));
                assert_literal(&s, &sa, 3)?;
                prop_assert_eq!(sa == sb, a == b, "{:?} {:?} -> {}", a, b, sa);
                prop_assert_eq!(nats_matches(&sa, &sb), a == b, "{} vs {}", sa, sb);
                // The bucket subscription an edge holds for `b` receives `a`
                // exactly when both share the bucket (the edge then picks
                // the topic out of the envelope), and carries `a`'s route
                // only on `a`'s own subject.
                let bucket_b = s.topic_bucket(topic_bucket(&b));
                prop_assert_eq!(
                    nats_matches(&bucket_b, &sa),
                    topic_bucket(&a) == topic_bucket(&b),
                    "{} vs {}", bucket_b, sa
                );
                prop_assert!(s.carries(&sa, Route::Topic(&a)));
                prop_assert_eq!(s.carries(&sb, Route::Topic(&a)), a == b);
                prop_assert_eq!(s.stream_of(&sa), Some((true, a.clone())));
            }

            #[test]
            fn distinct_uids_get_distinct_literal_subjects(
                s in subjects(),
                a in any_name(),
                b in any_name(),
            ) {
                let (sa, sb) = (s.user(&a), s.user(&b));
                assert_literal(&s, &sa, 3)?;
                prop_assert_eq!(sa == sb, a == b, "{:?} {:?} -> {}", a, b, sa);
                // The bucket subscription an edge holds for `b` receives `a`
                // exactly when both share the bucket (the edge then picks
                // the user out of the envelope).
                let bucket_b = s.user_bucket(user_bucket(&b));
                prop_assert_eq!(
                    nats_matches(&bucket_b, &sa),
                    user_bucket(&a) == user_bucket(&b),
                    "{} vs {}", bucket_b, sa
                );
            }

            #[test]
            fn topics_never_reach_users_or_everyone(
                s in subjects(),
                topic in any_name(),
                uid in any_name(),
            ) {
                let (topic, user, everyone) = (s.topic(&topic), s.user(&uid), s.everyone());
                assert_literal(&s, &everyone, 1)?;
                prop_assert_ne!(&topic, &user);
                prop_assert_ne!(&topic, &everyone);
                let subscriptions = [
                    topic.clone(),
                    user.clone(),
                    everyone.clone(),
                    s.user_bucket(user_bucket(&uid)),
                ];
                for subscription in &subscriptions[1..] {
                    prop_assert!(!nats_matches(subscription, &topic), "{} got {}", subscription, topic);
                }
                prop_assert!(!nats_matches(&topic, &user), "{} got {}", topic, user);
                prop_assert!(!nats_matches(&topic, &everyone), "{} got {}", topic, everyone);
                // Nor does a topic bucket subscription receive users or
                // everyone pushes.
                for bucket in [topic_bucket(&uid), topic_bucket(&topic), 0, TOPIC_BUCKETS - 1] {
                    let subscription = s.topic_bucket(bucket);
                    prop_assert!(!nats_matches(&subscription, &user), "{} got {}", subscription, user);
                    prop_assert!(!nats_matches(&subscription, &everyone), "{} got {}", subscription, everyone);
                }
            }

            #[test]
            fn presence_subjects_are_literal_and_apart(
                s in subjects(),
                a in any_name(),
                b in any_name(),
            ) {
                let (pa, pb) = (s.presence_topic(&a), s.presence_topic(&b));
                assert_literal(&s, &pa, 3)?;
                prop_assert_eq!(a == b, pa == pb);
                for other in [s.presence_users(), s.presence_heartbeat(), s.topic(&a), s.everyone()] {
                    prop_assert!(!nats_matches(&other, &pa), "{} got {}", other, pa);
                    prop_assert!(!nats_matches(&pa, &other), "{} got {}", pa, other);
                }
            }
        }
    }
}
