//! The pure core: what a rollout is, what it owes each pipeline, what goes to ilert, when, and
//! what status says. Functions from data to data and intents: no API server, no HTTP, no tasks,
//! no clock (time comes in as a parameter). `tests/architecture.rs` holds every file here to that.

pub mod alerts;
pub mod argo;
pub mod book;
pub mod channel;
pub mod context;
pub mod decide;
pub mod digest;
pub mod group;
pub mod history;
pub mod index;
pub mod keys;
pub mod ledger;
pub mod pacing;
pub mod pairs;
pub mod payload;
pub mod preview;
pub mod report;
pub mod rollout;
pub mod selection;
pub mod status;
pub mod sym;
pub mod template;
pub mod text;
pub mod uid;
