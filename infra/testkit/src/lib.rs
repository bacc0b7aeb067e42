//! Test support for fleetlake's integration tests: moto server on a free port, unique resource names, a
//! Lambda runtime API harness that runs a function binary exactly as the Lambda service does, and HTTP requests
//! as Function URLs and HTTP APIs hand them to a function.

// A test and benchmark tool, not Lambda code: a failed setup stops it with its reason.
#![allow(clippy::expect_used, clippy::panic, clippy::string_slice)]

pub mod http;
pub mod lake;
mod moto;
mod postgres;
mod proxy;
mod runtime;

pub use moto::{config_for, create_predictions_table, Dynoxide, Moto};
pub use postgres::{pg_bindir, Postgres, PG_ADMIN};
pub use proxy::{
    counting_proxy, forwarding_proxy, operation, serialising_proxy, through, BeforeForward, RequestCounts,
};
pub use runtime::{Invocation, LambdaHarness};

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// The workspace root (this crate lives at `infra/testkit`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap_or_else(|_| PathBuf::from("."))
}

/// A program of the project's Python venv (`FLEETLAKE_VENV`, default `<root>/.venv`), which `make venv` creates.
pub fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("FLEETLAKE_VENV").map_or_else(|| workspace_root().join(".venv"), PathBuf::from);
    venv.join("bin").join(name)
}

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// A name no other test of this run uses: `<prefix>-<pid>-<n>`, lowercase (valid for buckets and queues).
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}
