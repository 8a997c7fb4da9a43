//! Routing: path patterns, the compiled route table, the matcher index, splits, and the store
//! that swaps tables atomically.

pub mod pattern;
