//! The `Authorization: Basic` header, parsed step by step.

use std::fmt;

use base64::Engine;
use http::HeaderValue;

/// Longest `Authorization` value we decode; longer ones are malformed.
const MAX_HEADER_LEN: usize = 4096;

/// A user name and password from a Basic header. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicCredentials {
    /// The part before the first `:`.
    pub username: String,
    /// The part after it; may itself contain `:`.
    pub password: String,
}

impl fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicCredentials").field("username", &self.username).finish_non_exhaustive()
    }
}

/// Why an `Authorization` header could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BasicError {
    /// The scheme is not `Basic` (e.g. `Bearer`).
    #[error("the Authorization scheme is not Basic")]
    UnsupportedScheme,
    /// Not base64, not UTF-8, too long, or without the `:` separator.
    #[error("the Basic credentials are malformed")]
    Malformed,
}

/// Reads `Basic base64(user:password)`. The scheme matches case-insensitively (RFC 9110 §11.1).
pub fn parse_basic(header: &HeaderValue) -> Result<BasicCredentials, BasicError> {
    if header.len() > MAX_HEADER_LEN {
        return Err(BasicError::Malformed);
    }
    let value = header.to_str().map_err(|_| BasicError::Malformed)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(if value.eq_ignore_ascii_case("basic") {
        BasicError::Malformed
    } else {
        BasicError::UnsupportedScheme
    })?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(BasicError::UnsupportedScheme);
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(token.trim()).map_err(|_| BasicError::Malformed)?;
    let text = String::from_utf8(decoded).map_err(|_| BasicError::Malformed)?;
    let (username, password) = text.split_once(':').ok_or(BasicError::Malformed)?;
    Ok(BasicCredentials { username: username.to_owned(), password: password.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &str) -> Result<BasicCredentials, BasicError> {
        parse_basic(&HeaderValue::from_str(v).unwrap())
    }

    #[test]
    fn the_product_page_header_is_user0_secret0() {
        let c = parse("Basic dXNlcjA6c2VjcmV0MA==").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("user0", "secret0"));
    }

    #[test]
    fn scheme_is_case_insensitive_and_password_may_hold_colons() {
        let c = parse(&format!("bAsIc {}", base64::engine::general_purpose::STANDARD.encode("u:p:q"))).unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p:q"));
    }

    #[test]
    fn malformed_headers_are_told_apart_from_other_schemes() {
        assert_eq!(parse("Bearer abc"), Err(BasicError::UnsupportedScheme));
        assert_eq!(parse("Basic"), Err(BasicError::Malformed));
        assert_eq!(parse("Basic !!!"), Err(BasicError::Malformed));
        assert_eq!(parse("Basic dXNlcjA="), Err(BasicError::Malformed), "no colon");
        assert_eq!(parse("Basic /w=="), Err(BasicError::Malformed), "not UTF-8");
        assert_eq!(parse(&format!("Basic {}", "A".repeat(5000))), Err(BasicError::Malformed));
    }

    #[test]
    fn debug_output_hides_the_password() {
        let shown = format!("{:?}", parse("Basic dXNlcjA6c2VjcmV0MA==").unwrap());
        assert!(shown.contains("user0") && !shown.contains("secret0"), "{shown}");
    }
}
