//! End-to-end tests against the real local control plane (`make test` starts it) and a fake ilert.
//! Each test has its own namespace and its own controller process, so they run in parallel.

mod alerts;
mod argo;
#[allow(dead_code)]
mod argo_rollouts;
mod bad_input;
mod chart;
mod cluster;
mod controller;
mod docs;
mod examples;
mod groups;
mod hostile;
mod image;
mod operations;
mod ops_kit;
mod plugin;
mod promise;
mod sets;
mod shaping;
mod shards;
#[allow(dead_code)]
mod support;
#[allow(dead_code)]
mod world;

// What every suite module gets through `use crate::*`.
#[allow(unused_imports)]
use {
    ilert_rollout_controller::pipeline::IlertPipeline,
    k8s_openapi::api::apps::v1::Deployment,
    kube::Client,
    kube::api::{Api, Patch, PatchParams},
    serde_json::{Value, json},
    std::time::Duration,
    support::*,
    world::*,
};
