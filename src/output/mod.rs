//! Outputs: what reads a stream's hub and sends it on. They know WebM chunks and join points, not sources.
//!
//! - [`progressive`]: `GET`/`HEAD /live/{name}`: a viewer's endless WebM response, on the bare socket or
//!   through hyper.
//! - [`dash`]: a stream's live DASH manifest and segments (`/live/{name}/manifest.mpd`), for caches and
//!   players.
//! - [`fanout`]: threads that write new chunks straight to caught-up viewers' sockets.

pub mod dash;
pub mod fanout;
pub mod progressive;
