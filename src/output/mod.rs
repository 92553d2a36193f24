//! Outputs: what reads a stream's hub and sends it on. They know WebM chunks and join points, not sources.
//!
//! - [`progressive`]: `GET`/`HEAD /live/{name}`: a viewer's endless WebM response, on the bare socket or
//!   through hyper.
//! - [`fanout`]: threads that write new chunks straight to caught-up viewers' sockets.

pub mod fanout;
pub mod progressive;
