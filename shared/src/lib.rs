//! fleetlake's shared core: record validation and landing logic, typed config, S3 and quarantine adapters, telemetry.
//!
//! The modules split into a functional core that does no I/O (`records`, `cdc`, `landing`, `enrich`, `lake`, `ndjson`, `s3event`)
//! and thin adapters around the AWS SDK (`aws`, `s3`, `quarantine`, `weather`) and the process (`config`, `telemetry`).
//! With the `delta` feature: the bronze tables' schemas and JSON → Arrow conversion (`bronze`, no I/O), the Delta
//! Lake adapter (`delta`) and commits → partitions and manifests (`partitions`, no I/O); with `glue`, the Glue
//! Data Catalog adapter (`glue`).

pub mod aws;
#[cfg(feature = "delta")]
pub mod bronze;
pub mod cdc;
pub mod config;
#[cfg(feature = "delta")]
pub mod delta;
pub mod enrich;
pub mod error;
pub mod features;
#[cfg(feature = "glue")]
pub mod glue;
pub mod lake;
pub mod landing;
#[cfg(feature = "model")]
pub mod model;
pub mod ndjson;
#[cfg(feature = "delta")]
pub mod partitions;
#[cfg(feature = "predictions")]
pub mod predictions;
pub mod quarantine;
pub mod records;
pub mod s3;
pub mod s3event;
pub mod telemetry;
pub mod weather;

pub use error::{Error, Result};
