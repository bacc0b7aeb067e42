//! Pagination tokens: opaque to clients, signed so that a token the API did not hand out — or one handed out for
//! another unit or range — is refused before anything reaches DynamoDB.
//!
//! A token is base64url (no padding) of `after ‖ tag`, where `after` is the `predicted_at` key of the last item
//! of the page (the next page starts after it) and `tag` the first 16 bytes of
//! HMAC-SHA256(`PAGINATION_KEY`, `v1 ‖ unit ‖ from ‖ to ‖ after`, fields separated by NUL). Tokens do not expire;
//! a page that follows items since expired from the table is just shorter.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Bytes of the HMAC kept in a token.
const TAG_BYTES: usize = 16;
/// Longest token accepted, in characters (a key of 27 bytes and the tag make 58).
pub(crate) const MAX_TOKEN_CHARS: usize = 128;

/// The query a token belongs to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scope<'a> {
    pub(crate) unit: &'a str,
    pub(crate) from: &'a str,
    pub(crate) to: &'a str,
}

/// Signs and checks tokens with one key.
#[derive(Clone)]
pub(crate) struct Tokens {
    key: Vec<u8>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").finish_non_exhaustive()
    }
}

/// Why a token was refused (the API answers 400 with this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenError {
    Malformed,
    Forged,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenError::Malformed => "is not a token this API hands out",
            TokenError::Forged => {
                "was not issued for this unit and range (or the API's key changed): start again without next"
            }
        })
    }
}

impl Tokens {
    pub(crate) fn new(key: &[u8]) -> Self {
        Self { key: key.to_vec() }
    }

    fn mac(&self, scope: Scope<'_>, after: &[u8]) -> Hmac<Sha256> {
        // HMAC takes a key of any length (a long one is hashed first): this cannot fail.
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key) else {
            unreachable!("HMAC accepts keys of every length")
        };
        for part in [b"v1".as_slice(), scope.unit.as_bytes(), scope.from.as_bytes(), scope.to.as_bytes(), after] {
            mac.update(part);
            mac.update(&[0]);
        }
        mac
    }

    /// The token of the page after `after` in `scope`.
    pub(crate) fn issue(&self, scope: Scope<'_>, after: &str) -> String {
        let tag = self.mac(scope, after.as_bytes()).finalize().into_bytes();
        let mut raw = after.as_bytes().to_vec();
        raw.extend_from_slice(tag.get(..TAG_BYTES).unwrap_or_default());
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The `after` key a token names, if this key issued it for `scope`.
    pub(crate) fn check(&self, scope: Scope<'_>, token: &str) -> Result<String, TokenError> {
        if token.is_empty() || token.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::Malformed);
        }
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| TokenError::Malformed)?;
        let split = raw.len().checked_sub(TAG_BYTES).filter(|n| *n > 0).ok_or(TokenError::Malformed)?;
        let (after, tag) = raw.split_at(split);
        self.mac(scope, after).verify_truncated_left(tag).map_err(|_| TokenError::Forged)?;
        String::from_utf8(after.to_vec()).map_err(|_| TokenError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SCOPE: Scope<'static> =
        Scope { unit: "TU-000001", from: "0001-01-01T00:00:00.000000Z", to: "9999-12-31T23:59:59.999999Z" };
    const AFTER: &str = "2026-11-30T12:15:00.000000Z";

    fn tokens() -> Tokens {
        Tokens::new(b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn a_token_names_its_page_only_in_its_scope_and_under_its_key() {
        let t = tokens().issue(SCOPE, AFTER);
        assert!(t.len() <= MAX_TOKEN_CHARS);
        assert_eq!(tokens().check(SCOPE, &t).unwrap(), AFTER);
        let other_unit = Scope { unit: "TU-000002", ..SCOPE };
        assert_eq!(tokens().check(other_unit, &t), Err(TokenError::Forged));
        let other_range = Scope { to: "2026-12-01T00:00:00.000000Z", ..SCOPE };
        assert_eq!(tokens().check(other_range, &t), Err(TokenError::Forged));
        let other_key = Tokens::new(b"fedcba9876543210fedcba9876543210");
        assert_eq!(other_key.check(SCOPE, &t), Err(TokenError::Forged));
        assert_eq!(tokens().check(SCOPE, ""), Err(TokenError::Malformed));
        assert_eq!(tokens().check(SCOPE, "!!!"), Err(TokenError::Malformed));
        assert_eq!(tokens().check(SCOPE, &"A".repeat(MAX_TOKEN_CHARS + 1)), Err(TokenError::Malformed));
    }

    proptest! {
        #[test]
        fn any_string_is_refused_or_names_what_was_signed(s in ".{0,200}") {
            // Never panics; a random string is never accepted.
            prop_assert!(tokens().check(SCOPE, &s).is_err());
        }

        #[test]
        fn every_changed_character_is_refused(i in 0usize..58, c in "[A-Za-z0-9_-]") {
            let t = tokens().issue(SCOPE, AFTER);
            let mut chars: Vec<char> = t.chars().collect();
            let i = i % chars.len();
            let new = c.chars().next().unwrap();
            prop_assume!(chars[i] != new);
            chars[i] = new;
            let tampered: String = chars.into_iter().collect();
            prop_assert!(tokens().check(SCOPE, &tampered).is_err());
        }

        #[test]
        fn issued_tokens_round_trip(after in "[0-9T:.Z-]{1,40}") {
            let t = tokens().issue(SCOPE, &after);
            prop_assert_eq!(tokens().check(SCOPE, &t).unwrap(), after);
        }
    }
}
