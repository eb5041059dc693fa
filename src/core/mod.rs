//! The pure core: what names may look like, releases and their tags, the
//! config, the plan, nginx's upstream files read and edited as text. No
//! network, no host: table-tested.

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
