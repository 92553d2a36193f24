//! The crate's one error type: a kind (which decides the HTTP status and the stable `code`) plus a message
//! with context (stream name, template, element path).
//!
//! Every HTTP error body has one shape: `{"error": {"code": "...", "message": "..."}}`. Internal and pipeline
//! failures (500) carry a generic message, the detail goes to the log; a reached limit (503) names the limit.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, as the client should see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Malformed request (bad stream name, bad parameter).
    BadRequest,
    /// Missing, wrong, revoked or expired credentials.
    Unauthorized,
    /// The caller is known but not allowed (address outside the masks, output not granted).
    Forbidden,
    /// No such stream.
    NotFound,
    /// The stream name is already being pushed.
    Busy,
    /// A continuation (`Content-Range`) that does not start where the stream's input is.
    BadOffset,
    /// The input is not a container/codec transcast can read.
    UnsupportedMedia,
    /// A configured limit (streams, clients, transcodes) is reached.
    Unavailable,
    /// An upstream (an edge's origin, a pull's URL) refused or failed.
    BadGateway,
    /// An upstream did not deliver in time (`--pull-start-timeout`).
    GatewayTimeout,
    /// A template or pipeline failed for reasons that are not the client's fault.
    Pipeline,
    /// Anything else internal.
    Internal,
}

impl Kind {
    pub fn status(self) -> StatusCode {
        match self {
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::Busy => StatusCode::CONFLICT,
            Kind::BadOffset => StatusCode::RANGE_NOT_SATISFIABLE,
            Kind::UnsupportedMedia => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::BadGateway => StatusCode::BAD_GATEWAY,
            Kind::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Kind::Pipeline | Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable machine-readable code for the JSON body.
    pub fn code(self) -> &'static str {
        match self {
            Kind::BadRequest => "bad_request",
            Kind::Unauthorized => "unauthorized",
            Kind::Forbidden => "forbidden",
            Kind::NotFound => "not_found",
            Kind::Busy => "stream_busy",
            Kind::BadOffset => "bad_offset",
            Kind::UnsupportedMedia => "unsupported_media",
            Kind::Unavailable => "limit_reached",
            Kind::BadGateway => "upstream_failed",
            Kind::GatewayTimeout => "upstream_timeout",
            Kind::Pipeline => "pipeline_error",
            Kind::Internal => "internal_error",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: Kind,
    pub message: String,
}

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(Kind::BadRequest, m)
    }
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(Kind::Unauthorized, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(Kind::Forbidden, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, m)
    }
    pub fn unsupported(m: impl Into<String>) -> Self {
        Self::new(Kind::UnsupportedMedia, m)
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(Kind::Unavailable, m)
    }
    pub fn pipeline(m: impl Into<String>) -> Self {
        Self::new(Kind::Pipeline, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(Kind::Internal, m)
    }
}

/// Text from outside (a peer's error message) made safe to log and to repeat: control characters (CR, LF,
/// escape sequences) are escaped, so it cannot start a log line of its own or drive a terminal.
pub fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

impl From<glib::BoolError> for Error {
    fn from(e: glib::BoolError) -> Self {
        Error::pipeline(e.to_string())
    }
}

impl From<glib::Error> for Error {
    fn from(e: glib::Error) -> Self {
        Error::pipeline(e.to_string())
    }
}

impl From<gstreamer::StateChangeError> for Error {
    fn from(e: gstreamer::StateChangeError) -> Self {
        Error::pipeline(e.to_string())
    }
}

#[derive(Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Serialize)]
pub struct ErrorDetail<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.kind.status();
        // Limits (503) say which limit; only genuine internal failures are hidden.
        let message = if matches!(self.kind, Kind::Pipeline | Kind::Internal) {
            tracing::error!(code = self.kind.code(), "internal error: {}", self.message);
            "internal error, see the server log"
        } else {
            &self.message
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.kind.code(),
                message,
            },
        };
        (status, axum::Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status and JSON body an error answers with.
    async fn answer(e: Error) -> (StatusCode, serde_json::Value) {
        let resp = e.into_response();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn server_errors_hide_details() {
        let (status, v) = answer(Error::pipeline("element /pipeline0/vp8enc0 exploded")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(v["error"]["code"], "pipeline_error");
        assert!(!v["error"]["message"].as_str().unwrap().contains("vp8enc"));
    }

    #[tokio::test]
    async fn limit_errors_name_the_limit() {
        let (status, v) = answer(Error::unavailable(
            "the client limit (--max-clients 2) is reached",
        ))
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(v["error"]["code"], "limit_reached");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--max-clients 2")
        );
    }

    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(
            printable("a\r\nFORGED é\u{1b}[2J"),
            "a\\r\\nFORGED é\\u{1b}[2J"
        );
    }

    #[tokio::test]
    async fn client_errors_keep_message() {
        let (status, v) = answer(Error::unsupported("not a media file")).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(v["error"]["code"], "unsupported_media");
        assert_eq!(v["error"]["message"], "not a media file");
    }
}
