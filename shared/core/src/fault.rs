//! Whose fault a failure is: the environment's (retry it) or the input's (quarantine it and go on).

/// The error underneath another, kept as its `source()` so a report shows the whole chain.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Whether retrying the same input can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A dependency failed (S3 unreachable, throttled, timed out): Lambda should retry the invocation.
    Retryable,
    /// The input itself is at fault (object missing, not gzip): retrying gives the same answer.
    Permanent,
}

impl Fault {
    /// The `errorType` a handler reports to Lambda: `fleetlake.Retryable` or `fleetlake.Permanent`.
    pub fn error_type(self) -> &'static str {
        match self {
            Fault::Retryable => "fleetlake.Retryable",
            Fault::Permanent => "fleetlake.Permanent",
        }
    }
}

/// An error that knows whose fault it is. Every error a function's per-object work returns implements it, so the
/// invocation runner can decide between a retry and a quarantine without looking inside.
pub trait Classify {
    /// Retryable (the environment failed) or permanent (the input is at fault).
    fn fault(&self) -> Fault;
}
