//! Why a push call failed, and how each transport reports it.
//!
//! One [`ApiError`] serves both APIs: HTTP turns it into a status code and a
//! JSON body `{"code": "...", "message": "..."}`, gRPC into a [`Status`].
//! Client mistakes are logged at `debug` (they are the caller's problem, not
//! ours); bus failures at `warn`.
//!
//! | code | HTTP | gRPC |
//! |---|---|---|
//! | `bad_json`, `bad_base64`, `invalid_topic`, `invalid_uid`, `payload_too_large`, `batch_too_large`, `empty_batch` | 400 | `INVALID_ARGUMENT` |
//! | `body_too_large` (HTTP body over the request limit) | 413 | `OUT_OF_RANGE` (from tonic, message over the same limit) |
//! | `request_timeout` (call longer than `request_timeout`) | 408 | `CANCELLED` (from tonic) |
//! | `unauthorized` | 401 | `UNAUTHENTICATED` |
//! | `rate_limited` (over `push_rate`; `Retry-After` says when to retry) | 429 | `RESOURCE_EXHAUSTED` |
//! | `bus_unavailable` | 503 | `UNAVAILABLE` |
//! | `etcd_not_configured`, `no_edges` (edge listing) | 503 | - |
//! | `not_found` (no such route) | 404 | - |

use axum::Json;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use gpush_common::{BusError, NameError};
use serde::Serialize;
use std::fmt;
use tonic::Status;

/// The field of a request an error is about: `topic` in a single push,
/// `messages[3].topic` in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Position in the batch, or None for a single push.
    pub index: Option<usize>,
    /// Name of the field in the message.
    pub name: &'static str,
}

impl Field {
    /// `name` of the single message (`index` None) or of `messages[index]`.
    pub fn new(index: Option<usize>, name: &'static str) -> Self {
        Self { index, name }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "messages[{i}].{}", self.name),
            None => f.write_str(self.name),
        }
    }
}

/// A push call that was refused. Every variant names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON of the expected shape (or not sent as JSON).
    #[error("{0}")]
    BadJson(String),
    /// The request body is over the size limit of the HTTP API.
    #[error("request body is over the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// `data` is not valid base64.
    #[error("{field}: invalid base64: {reason}")]
    BadBase64 {
        field: Field,
        /// What the decoder said.
        reason: String,
    },
    /// The topic is not a valid name.
    #[error("{field}: {error}")]
    InvalidTopic { field: Field, error: NameError },
    /// The uid is not a valid name.
    #[error("{field}: {error}")]
    InvalidUid { field: Field, error: NameError },
    /// The payload is over `max_payload`.
    #[error("{field}: payload is {len} bytes, the maximum is {max}")]
    PayloadTooLarge {
        field: Field,
        /// Decoded payload length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// More messages than `max_batch` in one call. Reading stops at
    /// the first one over, so how many more is not known.
    #[error("messages: batch has more than {max} messages (max_batch)")]
    BatchTooLarge {
        /// The configured maximum.
        max: usize,
    },
    /// The call took longer than `request_timeout` (a body sent too
    /// slowly, most likely); nothing of it was published.
    #[error("request not completed within {secs} s")]
    RequestTimeout {
        /// The configured timeout, in seconds (rounded up).
        secs: u64,
    },
    /// A batch without messages.
    #[error("messages: batch is empty")]
    EmptyBatch,
    /// An API key is configured and the call did not carry it.
    #[error("missing or wrong API key: send `authorization: Bearer <key>`")]
    Unauthorized,
    /// The push rate limit (`push_rate`) has no room for the call's
    /// messages; nothing was published.
    #[error("push rate limit reached: retry in {retry_after_secs} s")]
    RateLimited {
        /// Seconds until the call would fit, rounded up (`Retry-After`).
        retry_after_secs: u64,
    },
    /// The bus did not take the pushes; nothing or only part was published.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// Edge listing was asked for but no etcd is configured.
    #[error("edge listing needs etcd: set etcd_endpoints")]
    EdgesNotConfigured,
    /// No live edge is known.
    #[error("no live edge is registered")]
    NoEdges,
    /// No such HTTP route.
    #[error("no such endpoint")]
    NotFound,
    /// A query that cannot be answered as asked; says why.
    #[error("{0}")]
    BadQuery(String),
    /// The history asked for is not kept (history off, or off for it).
    #[error("no history is kept for {0}")]
    NoHistory(String),
    /// The edges' answer to a server API call is larger than ingress
    /// holds; ask for less (one uid, a topic prefix).
    #[error("the edges' answer exceeds {max} bytes; ask for less (a uid, a prefix)")]
    AnswerTooLarge { max: usize },
    /// An edge refused a server API command (it checks names with its own
    /// `max_name_len`).
    #[error("an edge refused the command: {0}")]
    EdgeRefused(String),
}

impl ApiError {
    /// The stable, machine-readable code in the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadJson(_) => "bad_json",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::BadBase64 { .. } => "bad_base64",
            ApiError::InvalidTopic { .. } => "invalid_topic",
            ApiError::InvalidUid { .. } => "invalid_uid",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::BatchTooLarge { .. } => "batch_too_large",
            ApiError::EmptyBatch => "empty_batch",
            ApiError::RequestTimeout { .. } => "request_timeout",
            ApiError::Unauthorized => "unauthorized",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Bus(_) => "bus_unavailable",
            ApiError::EdgesNotConfigured => "etcd_not_configured",
            ApiError::NoEdges => "no_edges",
            ApiError::NotFound => "not_found",
            ApiError::BadQuery(_) => "bad_query",
            ApiError::NoHistory(_) => "no_history",
            ApiError::EdgeRefused(_) => "edge_refused",
            ApiError::AnswerTooLarge { .. } => "answer_too_large",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadJson(_)
            | ApiError::BadBase64 { .. }
            | ApiError::InvalidTopic { .. }
            | ApiError::InvalidUid { .. }
            | ApiError::PayloadTooLarge { .. }
            | ApiError::BatchTooLarge { .. }
            | ApiError::BadQuery(_)
            | ApiError::EdgeRefused(_)
            | ApiError::EmptyBatch => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge { .. } | ApiError::AnswerTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound | ApiError::NoHistory(_) => StatusCode::NOT_FOUND,
            ApiError::Bus(_) | ApiError::EdgesNotConfigured | ApiError::NoEdges => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// Logs the error at a level that matches whose fault it is: only a
    /// failing bus is worth an operator's attention.
    fn log(&self) {
        if let ApiError::Bus(e) = self {
            // The client sees the kind only; the operator gets the cause too.
            let cause = std::error::Error::source(e).map(ToString::to_string);
            tracing::warn!(code = self.code(), cause, "push API: {self}");
        } else {
            tracing::debug!(code = self.code(), "push API: {self}");
        }
    }
}

/// The JSON body of every HTTP error.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let body = ErrorBody {
            code: self.code(),
            message: self.to_string(),
        };
        let mut response = (self.status(), Json(body)).into_response();
        if let ApiError::RateLimited { retry_after_secs } = self {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        error.log();
        let message = error.to_string();
        match error {
            ApiError::Unauthorized => Status::unauthenticated(message),
            ApiError::Bus(_) | ApiError::EdgesNotConfigured | ApiError::NoEdges => {
                Status::unavailable(message)
            }
            ApiError::NotFound | ApiError::NoHistory(_) => Status::not_found(message),
            ApiError::RequestTimeout { .. } => Status::deadline_exceeded(message),
            ApiError::BodyTooLarge { .. }
            | ApiError::RateLimited { .. }
            | ApiError::AnswerTooLarge { .. } => Status::resource_exhausted(message),
            ApiError::BadJson(_)
            | ApiError::BadBase64 { .. }
            | ApiError::InvalidTopic { .. }
            | ApiError::InvalidUid { .. }
            | ApiError::PayloadTooLarge { .. }
            | ApiError::BatchTooLarge { .. }
            | ApiError::BadQuery(_)
            | ApiError::EdgeRefused(_)
            | ApiError::EmptyBatch => Status::invalid_argument(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_name_the_batch_position() {
        assert_eq!(Field::new(None, "topic").to_string(), "topic");
        assert_eq!(Field::new(Some(3), "uid").to_string(), "messages[3].uid");
        let e = ApiError::InvalidTopic {
            field: Field::new(Some(3), "topic"),
            error: NameError::ControlChar,
        };
        assert_eq!(
            e.to_string(),
            "messages[3].topic: contains a control character"
        );
    }

    #[test]
    fn grpc_codes() {
        let code = |e: ApiError| Status::from(e).code();
        assert_eq!(code(ApiError::EmptyBatch), tonic::Code::InvalidArgument);
        assert_eq!(code(ApiError::Unauthorized), tonic::Code::Unauthenticated);
        assert_eq!(
            code(ApiError::Bus(BusError::NotConnected)),
            tonic::Code::Unavailable
        );
        assert_eq!(
            code(ApiError::RateLimited {
                retry_after_secs: 1
            }),
            tonic::Code::ResourceExhausted
        );
    }

    #[test]
    fn rate_limited_is_429_with_retry_after() {
        let response = ApiError::RateLimited {
            retry_after_secs: 3,
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response.headers().get(RETRY_AFTER),
            Some(&HeaderValue::from_static("3"))
        );
    }
}
