//! The crate's one error type: a kind (which decides the HTTP status and the stable `code`) plus a message
//! with context (stream name, template, element path).
//!
//! The kinds are what a client sees: the HTTP layer ([`crate::http`]) maps each to its status and writes the
//! one error body shape, `{"error": {"code": "...", "message": "..."}}`, so the media path builds without any
//! HTTP crate.

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
    /// The HTTP status a client gets for it (SRT refusals send the same numbers, plus 1000).
    pub fn http_status(self) -> u16 {
        match self {
            Kind::BadRequest => 400,
            Kind::Unauthorized => 401,
            Kind::Forbidden => 403,
            Kind::NotFound => 404,
            Kind::Busy => 409,
            Kind::BadOffset => 416,
            Kind::UnsupportedMedia => 415,
            Kind::Unavailable => 503,
            Kind::BadGateway => 502,
            Kind::GatewayTimeout => 504,
            Kind::Pipeline | Kind::Internal => 500,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(
            printable("a\r\nFORGED é\u{1b}[2J"),
            "a\\r\\nFORGED é\\u{1b}[2J"
        );
    }
}
