//! The edges: watches and their indexes, the delivery loops, the key cache, ConfigMap and status
//! writes, Kubernetes Events, ilert's HTTP API and the probe server. They call into
//! [`crate::domain`] for every decision and carry out what it returns.

pub mod brain;
pub mod cli;
pub mod events;
pub mod handle;
pub mod ilert;
pub mod kube_client;
pub mod lean;
pub mod ledger_store;
pub mod outbox;
pub mod secrets;
pub mod sender;
pub mod server;
pub mod shared;
pub mod status_writer;
pub mod supervisor;
pub mod watch;

pub use brain::{Signals, run};
pub use shared::{Config, Readiness};
