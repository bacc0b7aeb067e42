//! fleetlake's functional core: plain functions over data, with no AWS types and no I/O.
//!
//! Kafka record → landed line (`landing`, `cdc`), landed line → validated record (`records`), records + weather
//! → enriched lines (`enrich`, `weather`), JSON lines → Arrow batches of the bronze tables (`bronze`), commit
//! actions → partitions and manifests (`partitions`), positions → model features (`features`). Every object
//! name is built in `lake`; configuration is typed in `config`; `fault` says whose fault a failure is.

pub mod bronze;
pub mod cdc;
pub mod config;
pub mod enrich;
pub mod fault;
pub mod features;
pub mod lake;
pub mod landing;
pub mod ndjson;
pub mod partitions;
pub mod poll;
pub mod quarantine;
pub mod records;
pub mod state;
pub mod weather;

#[cfg(test)]
mod properties;
