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

/// A TCP port free on loopback right now, below the kernel's range of ephemeral ports when there is room (10,000
/// and up): a server started on it then cannot lose it to the local end of some other test's outgoing connection
/// between this check and its bind. Another test can still take it: [`start_server`] starts again on another port.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_from > 11_000 {
        for _ in 0..200 {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            let port = 10_000 + (h.finish() % u64::from(ephemeral_from - 10_000)) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// Starts a server of a test on a [`free_port`] and waits until `answers(port)` is `Ok` while the server still
/// runs (a server that has exited cannot be what answered: another process took its port). A server that exits
/// first is started again on another port, five times at most. Fails after `within` in all with the reason of the
/// last look and the end of what the server wrote on stderr. The server is killed if the start fails or is dropped.
pub(crate) async fn start_server<F>(
    what: &str,
    within: std::time::Duration,
    mut command: impl FnMut(u16) -> std::process::Command,
    answers: impl Fn(u16) -> F,
) -> (std::process::Child, u16)
where
    F: std::future::Future<Output = Result<(), String>>,
{
    /// Kills the server unless it was handed over.
    struct Started(Option<std::process::Child>);
    impl Drop for Started {
        fn drop(&mut self) {
            if let Some(child) = self.0.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    let deadline = std::time::Instant::now() + within;
    let log = std::env::temp_dir().join(format!("{}.log", unique_name(&what.replace(' ', "-"))));
    let tail = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let from = (text.len().saturating_sub(2000)..text.len()).find(|&i| text.is_char_boundary(i));
        text[from.unwrap_or(text.len())..].to_owned()
    };
    for _ in 0..5 {
        let port = free_port();
        let stderr = std::fs::File::create(&log).expect("create the server's log");
        let child = command(port)
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let mut server = Started(Some(child));
        let exited = |server: &mut Started| server.0.as_mut().and_then(|c| c.try_wait().ok().flatten());
        loop {
            if let Some(status) = exited(&mut server) {
                eprintln!(
                    "{what} exited ({status}) before it answered on port {port}; again on another port:\n{}",
                    tail()
                );
                break;
            }
            let look = tokio::time::timeout(std::time::Duration::from_secs(10), answers(port)).await;
            let why = match look {
                Ok(Ok(())) if exited(&mut server).is_none() => {
                    let _ = std::fs::remove_file(&log);
                    return (server.0.take().expect("the server"), port);
                }
                Ok(Ok(())) => continue,
                Ok(Err(why)) => why,
                Err(_) => "no answer within 10 s".to_owned(),
            };
            if std::time::Instant::now() >= deadline {
                drop(server);
                panic!("{what} did not answer on port {port} within {within:?}: {why}\n{}", tail());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    panic!("{what} exited five times before it answered:\n{}", tail());
}

/// CPU time (user + system) process `pid` has used so far, in seconds; Linux only (`/proc/<pid>/stat`).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: utime and stime are the 12th and 13th, in clock ticks.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ: 100 on every architecture Linux and Lambda run on (x86_64, arm64).
    Some(ticks as f64 / 100.0)
}

/// A name no other test of this run uses: `<prefix>-<pid>-<n>`, lowercase (valid for buckets and queues).
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}
