//! The admin listener: a small HTTP/1 server, separate from the data plane, for metrics,
//! health and (see the admin API issue) table inspection and changes.

pub mod server;

pub use server::{serve, AdminState};
