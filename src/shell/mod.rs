//! The edges: watches and their indexes, the delivery loops, the key cache, ConfigMap and status
//! writes, Kubernetes Events, ilert's HTTP API and the probe server. They call into
//! [`crate::domain`] for every decision and carry out what it returns.

pub mod controller;
pub mod ilert;
pub mod server;
pub mod supervisor;
