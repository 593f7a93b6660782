//! Fault injection on a control plane of its own (tests/run.sh starts it in target/chaos-cluster,
//! because these tests stop its API server and etcd). Each test ends by comparing what the fake
//! ilert received with the rollouts that happened: nothing missing, every duplicate explained.
//!
//! `make test` runs the bounded version; `make chaos` the long one (CHAOS_LONG=1): 200 rollouts
//! under kill -9, a 2-minute ilert outage, a 200-rollout burst across a failover.

#[allow(dead_code)]
#[path = "../e2e/support.rs"]
mod support;
#[allow(dead_code)]
#[path = "../e2e/world.rs"]
mod world;

#[allow(dead_code)]
#[path = "../e2e/argo_rollouts.rs"]
mod argo_rollouts;

mod faults;
mod optional_crd;

/// The long version (`make chaos`).
pub fn long() -> bool {
    std::env::var("CHAOS_LONG").is_ok_and(|v| !v.is_empty() && v != "0")
}
