//! switchyard: an edge proxy and control plane for moving live traffic between
//! infrastructures without downtime.
//!
//! Data flows one way: route files ([`config`]) are compiled into an immutable
//! [`routing::RouteTable`], a [`routing::TableStore`] swaps it atomically, and the proxy
//! ([`proxy`]) only reads snapshots. Health ([`health`]) writes its own map. The control plane
//! ([`control`]) talks to the outside world (AWS) and reaches the proxy only through the admin API.

pub mod admin;
pub mod cli;
pub mod config;
pub mod control;
pub mod fleet;
pub mod health;
pub mod metrics;
pub mod plan;
pub mod proxy;
pub mod routing;
pub mod serve;
