//! Migration plans (`switchyard plan`): a TOML file of steps (weights, approvals, drains,
//! control-plane commands) with gates evaluated during every wait, run as a journaled state
//! machine that rolls the route back when a gate fails and resumes after a crash.
//!
//! [`file`] parses and checks the plan, [`gate`] evaluates gates to figures, [`journal`] keeps
//! the local state, [`runner`] walks the steps, [`cli`] is the command line. The runner reaches
//! the proxy only through the admin API ([`crate::admin::client::AdminClient`]).

pub mod cli;
pub mod file;
pub mod gate;
pub mod journal;
pub mod runner;
