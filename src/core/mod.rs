//! The pure core, which every layer may use and which uses none of them: what
//! names may look like, image references, releases and their tags, the config,
//! what a host reports, the plan, the log's records, secrets, and nginx's
//! upstream files read and edited as text. No network, no host, no process;
//! the one file read is the config (`config::load`). Table-tested.

pub mod access_log;
pub mod config;
pub mod image;
pub mod names;
pub mod observed;
pub mod plan;
pub mod record;
pub mod release;
pub mod secret;
pub mod tags;
pub mod time;
pub mod upstream;
