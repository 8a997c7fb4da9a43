//! Routing: path patterns, the compiled route table, the matcher index, splits, and the store
//! that swaps tables atomically.

pub mod compile;
pub mod inflight;
pub mod matcher;
pub mod pattern;
pub mod resolve;
pub mod split;
pub mod store;
pub mod table;

pub use compile::{compile, Compiled, Diagnostic, Severity};
pub use store::TableStore;
pub use table::{RouteTable, Source};
