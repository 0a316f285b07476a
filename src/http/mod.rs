//! HTTP leaf types: what the runtime, the gateway and the upstream share
//! about requests and responses. A leaf: nothing here imports from the rest
//! of the crate, so every layer above can use it without a cycle.
//!
//! - [`error`]: `BoxError`, walking an error's causes, the 499 status.
//! - [`body`]: the response [`Body`] and local text responses.
//! - [`client_body`]: a client's request body as it arrives, HTTP/1 or
//!   HTTP/2.
//! - [`client_fields`]: a client's request fields as the gateway reads
//!   them, HTTP/1 (as they arrived) or HTTP/2 (a header map).
//! - [`upgrade`]: the client's side of a connection that switches
//!   protocols.
//! - [`request_body`]: the client's request body, buffered or streaming,
//!   and how it fails.
//! - [`ext`]: what the runtime knows of a request's connection ([`ClientConn`]), handed to the gateway beside it.
//! - [`headers`]: header rewriting (request id, Host, hop-by-hop,
//!   forwarding headers).
//! - [`path`]: one spelling per path.
//! - [`h1`]: sluice's own HTTP/1.1 codec (bodies; request and response
//!   heads, their fields kept as they arrived).

pub mod body;
pub mod client_body;
pub mod client_fields;
pub mod error;
pub(crate) mod ext;
pub mod h1;
pub(crate) mod headers;
pub mod path;
pub mod request_body;
pub mod upgrade;

pub use body::{Body, Reply, local, local_json, text_body};
pub use client_body::ClientBody;
pub use client_fields::ClientFields;
pub use error::BoxError;
pub(crate) use error::{STATUS_CLIENT_CLOSED, causes, error_chain};
pub use ext::ClientConn;
