//! Secrets from SSM Parameter Store, read once at init.

/// Why a secret could not be read at init.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The SSM call failed (missing parameter, no permission, SSM unreachable).
    #[error("reading SSM parameter {name}: {message}")]
    Ssm {
        /// The parameter's name.
        name: String,
        /// The SDK error with its context.
        message: String,
        /// The SDK error.
        #[source]
        source: Box<aws_sdk_ssm::Error>,
    },
    /// The parameter exists but holds nothing.
    #[error("SSM parameter {0} has no value")]
    Empty(String),
}

/// Reads a secret (an API key) from SSM Parameter Store: a SecureString, decrypted, trimmed. Never logged.
pub async fn read_secure_parameter(ssm: &aws_sdk_ssm::Client, name: &str) -> Result<String, SecretError> {
    let out = ssm.get_parameter().name(name).with_decryption(true).send().await.map_err(|e| SecretError::Ssm {
        name: name.to_owned(),
        message: aws_sdk_ssm::error::DisplayErrorContext(&e).to_string(),
        source: Box::new(e.into()),
    })?;
    out.parameter()
        .and_then(|p| p.value())
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| SecretError::Empty(name.to_owned()))
}
