//! The error type of the adapters, split by whose fault it is: the environment's (retry) or the input's (report).

use fleetlake_core::config::ConfigError;
pub use fleetlake_core::fault::{Classify, Fault};

/// Result of an adapter call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the S3 and quarantine adapters and of configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration variable is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An S3 call failed after the SDK's own retries.
    #[error("S3 {op} s3://{bucket}/{key} failed: {message}")]
    S3 {
        /// The S3 operation (`PutObject`, `GetObject`).
        op: &'static str,
        /// Bucket of the object.
        bucket: String,
        /// Key of the object.
        key: String,
        /// The SDK error rendered with its full context chain.
        message: String,
        /// The SDK error.
        #[source]
        source: Box<aws_sdk_s3::Error>,
    },
    /// The object does not exist (deleted before it was processed, or a wrong key).
    #[error("s3://{bucket}/{key} does not exist")]
    NotFound {
        /// Bucket of the object.
        bucket: String,
        /// Key of the object.
        key: String,
    },
    /// The object was replaced since the event that named it: a later event names the current version, and this
    /// one has nothing left to do.
    #[error("s3://{bucket}/{key} was replaced since the event named it")]
    Superseded {
        /// Bucket of the object.
        bucket: String,
        /// Key of the object.
        key: String,
    },
    /// The event names the object by an ETag that no object can have (not an entity tag).
    #[error("the event names s3://{bucket}/{key} with {etag:?}, which is not an ETag")]
    BadEtag {
        /// Bucket of the object.
        bucket: String,
        /// Key of the object.
        key: String,
        /// The ETag as the event gave it.
        etag: String,
    },
    /// The object's bytes could not be read or decoded (truncated stream, not gzip).
    #[error("reading s3://{bucket}/{key}: {source}")]
    Read {
        /// Bucket of the object.
        bucket: String,
        /// Key of the object.
        key: String,
        /// The I/O or decoding error.
        #[source]
        source: std::io::Error,
    },
    /// Encoding output (gzip, JSON) failed.
    #[error("encoding output: {0}")]
    Encode(#[from] std::io::Error),
}

impl Classify for Error {
    fn fault(&self) -> Fault {
        Error::fault(self)
    }
}

impl Error {
    /// Whose fault the error is, deciding between "retry the invocation" and "report and go on".
    pub fn fault(&self) -> Fault {
        match self {
            Error::S3 { .. } | Error::Encode(_) => Fault::Retryable,
            // A superseded read is acknowledged by the handlers before it reaches the runner.
            Error::Config(_) | Error::NotFound { .. } | Error::Superseded { .. } | Error::BadEtag { .. } => {
                Fault::Permanent
            }
            // Not gzip, or a gzip stream that ends before its trailer (the decoder's UnexpectedEof): the object's
            // fault. A connection that drops mid-body surfaces from the SDK as another kind: retried.
            Error::Read { source, .. } => match source.kind() {
                std::io::ErrorKind::InvalidData
                | std::io::ErrorKind::InvalidInput
                | std::io::ErrorKind::UnexpectedEof => Fault::Permanent,
                _ => Fault::Retryable,
            },
        }
    }
}
