//! The pure core, which every layer may use and which uses none of them: what
//! names may look like, image references, releases and their tags, the config,
//! what a host reports, the plan, the log's records, secrets, and nginx's
//! upstream files read and edited as text. No network, no host, no process;
//! the one file read is the config (`config::load`). Table-tested.

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

// The gates that judge a release by what its users see (issue 18): read and judged
// here, wired into the rollout, the report and the printer next.
#[allow(dead_code)]
pub mod access_log;
#[allow(dead_code)]
pub mod prometheus;
#[allow(dead_code)]
pub mod promql;
#[allow(dead_code)]
pub mod resources;
#[allow(dead_code)]
pub mod traffic;
#[allow(dead_code)]
pub mod verdict;
