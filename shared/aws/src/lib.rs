//! fleetlake's AWS adapters: concrete structs around the SDK clients, built once at init.
//!
//! `sdk` (config with explicit timeouts and retries, the local-stack endpoint), `s3` (create-only puts,
//! streaming gzip reads and multipart writes), `quarantine` (the writer), `glue` (partitions), `predictions`
//! (the DynamoDB table), `ssm` (secrets), `s3event` (S3, SQS, SNS and EventBridge notifications), `telemetry` (JSON logs, EMF).

pub mod error;
pub mod glue;
pub mod predictions;
pub mod quarantine;
pub mod s3;
pub mod s3event;
pub mod sdk;
pub mod ssm;
pub mod telemetry;

pub use error::{Error, Result};
