//! fleetlake's shared core: record validation and landing logic, typed config, S3 and quarantine adapters, telemetry.
//!
//! The modules split into a functional core that does no I/O (`records`, `cdc`, `landing`, `lake`, `ndjson`)
//! and thin adapters around the AWS SDK (`aws`, `s3`, `quarantine`) and the process (`config`, `telemetry`).

pub mod aws;
pub mod cdc;
pub mod config;
pub mod error;
pub mod lake;
pub mod landing;
pub mod ndjson;
pub mod quarantine;
pub mod records;
pub mod s3;
pub mod telemetry;

pub use error::{Error, Result};
