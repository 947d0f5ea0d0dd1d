//! The edge's side of the control plane (see [`gpush_common::control`]):
//! the server API's commands carried out on this edge's hub, taken from the
//! control subject in a cluster or straight from the embedded push API in
//! standalone mode.
//!
//! Queries (presence, online, topics) are answered from the hub's indexes,
//! each shard locked briefly in turn. Commands that change a user's
//! connections leave an order for each of them in the hub and wake them
//! (see `hub/control.rs`); the answer counts the connections told, not yet
//! carried out (a disconnect closes within a write of the close frame).

use crate::hub::{Hub, Order};
use crate::presence::Presence;
use crate::state::EdgeState;
use futures_util::StreamExt;
use gpush_common::Subjects;
use gpush_common::control::{Answer, Command, MAX_TOPICS_LIMIT, split};
use gpush_common::push::validate_name;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Carries out `command` on this edge and counts it.
pub(crate) fn carry_out(shared: &EdgeState, command: &Command) -> Answer {
    shared.metrics.control(command.name());
    answer(
        &shared.hub,
        &shared.presence,
        command,
        shared.config.max_name_len,
    )
}

/// The answer of this edge's hub (or, for [`Command::Tracked`], of its
/// presence tracker) to `command`; names are checked as the client
/// protocol checks them (at most `max_name_len` bytes).
fn answer(hub: &Hub, presence: &Presence, command: &Command, max_name_len: usize) -> Answer {
    if let Err(error) = check(command, max_name_len) {
        return Answer::Refused { error };
    }
    let tell = |uid: &str, order: &dyn Fn() -> Order| {
        let connections = hub
            .user_connections(uid)
            .iter()
            .filter(|conn| hub.order(conn, order()))
            .count() as u64;
        Answer::Reached { connections }
    };
    match command {
        Command::Disconnect { uid, reason } => {
            tell(uid, &|| Order::Disconnect(reason.as_str().into()))
        }
        Command::Logout { uid } => tell(uid, &|| Order::Logout {
            uid: uid.as_str().into(),
        }),
        Command::Subscribe {
            uid,
            topic,
            public,
            keep,
        } => tell(uid, &|| Order::Subscribe {
            uid: uid.as_str().into(),
            topic: topic.as_str().into(),
            public: *public,
            keep: *keep,
        }),
        Command::Unsubscribe { uid, topic, public } => tell(uid, &|| Order::Unsubscribe {
            uid: uid.as_str().into(),
            topic: topic.as_str().into(),
            public: *public,
        }),
        Command::Presence { topic, uid } => {
            let (users, anonymous) = hub.presence(topic, uid);
            Answer::Presence { users, anonymous }
        }
        Command::Online { uids } => Answer::Online {
            counts: uids
                .iter()
                .map(|uid| hub.user_connection_count(uid))
                .collect(),
        },
        Command::Topics { prefix, limit } => {
            let (topics, truncated) = hub.topic_list(prefix, (*limit).min(MAX_TOPICS_LIMIT));
            Answer::Topics { topics, truncated }
        }
        Command::Tracked { topic } => presence.tracked(topic.as_deref()),
    }
}

/// Checks the names a command carries.
fn check(command: &Command, max_name_len: usize) -> Result<(), String> {
    let name = |what: &str, name: &str| {
        validate_name(name, max_name_len).map_err(|e| format!("{what} {e}"))
    };
    match command {
        Command::Disconnect { uid, .. } | Command::Logout { uid } => name("uid", uid),
        Command::Subscribe { uid, topic, .. } | Command::Unsubscribe { uid, topic, .. } => {
            name("uid", uid)?;
            name("topic", topic)
        }
        Command::Presence { topic, uid } => {
            name("topic", topic)?;
            if uid.is_empty() {
                Ok(())
            } else {
                name("uid", uid)
            }
        }
        Command::Online { uids } => uids.iter().try_for_each(|uid| name("uid", uid)),
        Command::Tracked { topic } => topic.as_deref().map_or(Ok(()), |t| name("topic", t)),
        Command::Topics { prefix, .. } => {
            if prefix.len() > max_name_len {
                Err(format!("prefix longer than {max_name_len} bytes"))
            } else {
                Ok(())
            }
        }
    }
}

/// Takes the server API's commands from the control subject until
/// `shutdown`, answering each on its reply subject in parts under the
/// server's `max_payload`.
pub(crate) async fn serve(
    client: async_nats::Client,
    subjects: Subjects,
    shared: Arc<EdgeState>,
    shutdown: CancellationToken,
) {
    let mut commands = match client.subscribe(subjects.control()).await {
        Ok(commands) => commands,
        Err(e) => {
            // Only when the client is closed.
            tracing::error!(error = %e, "control subscription failed");
            return;
        }
    };
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return,
            message = commands.next() => match message {
                Some(message) => message,
                None => return,
            },
        };
        let Some(reply) = message.reply else {
            continue;
        };
        let answer = match serde_json::from_slice::<Command>(&message.payload) {
            Ok(command) => carry_out(&shared, &command),
            Err(e) => Answer::Refused {
                error: format!("unreadable command: {e}"),
            },
        };
        // Half the server's limit: room for headers and protocol lines.
        let max_payload = (client.server_info().max_payload / 2).max(4096);
        for part in split(&shared.node_id, answer, max_payload) {
            // Parts are plain data: encoding cannot fail.
            let payload = serde_json::to_vec(&part).unwrap_or_default();
            if let Err(e) = client.publish(reply.clone(), payload.into()).await {
                tracing::warn!(error = %e, "control answer not sent");
                break;
            }
        }
    }
}
