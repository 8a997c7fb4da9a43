//! The admin listener, separate from the data plane: the JSON API over the route table
//! ([`api`]), bearer-token authentication ([`auth`]), the one path every table change takes
//! ([`ledger`]), the durable version history ([`history`]), change summaries ([`summary`]) and
//! the dashboard page ([`dashboard`]).

pub mod api;
pub mod auth;
pub mod client;
pub mod dashboard;
pub mod history;
pub mod ledger;
pub mod plans;
pub mod server;
pub mod shadow;
pub mod store;
pub mod summary;
pub mod types;

pub use auth::Tokens;
pub use history::History;
pub use ledger::Ledger;
pub use server::{serve, AdminState};
