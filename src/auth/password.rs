//! Stored password hashes: which schemes we verify, and how `passwd` makes one.
//!
//! Accepted: PHC strings of argon2 (`$argon2id$`, also `$argon2i$`/`$argon2d$`),
//! PBKDF2 (`$pbkdf2-sha256$`, `$pbkdf2-sha512$`) and scrypt (`$scrypt$`), and
//! bcrypt's `$2a$`/`$2b$`/`$2y$`; and, so Mosquitto users move over without a
//! password reset, `mosquitto_passwd`'s own `$6$` (salted SHA-512) and `$7$`
//! (PBKDF2-SHA512). Everything else, plain text included, is refused when the
//! config loads. Every comparison is constant-time: the RustCrypto `Output`
//! compares with `subtle`, as do the bcrypt crate and the Mosquitto schemes here.

use std::fmt;

use base64::Engine;
use password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// A password hash we know how to verify, checked when the config loads.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredHash {
    text: String,
    scheme: Scheme,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Argon2,
    Pbkdf2,
    Scrypt,
    Bcrypt,
    /// `$6$salt$hash`: SHA-512 over password then salt, both base64 (Mosquitto ≤ 1.6).
    MosquittoSha512,
    /// `$7$iterations$salt$hash`: PBKDF2-HMAC-SHA512, base64 (Mosquitto 2.0).
    MosquittoPbkdf2,
}

/// Longest PBKDF2 iteration count accepted from a `$7$` line: bounds the work one request can cause.
const MAX_MOSQUITTO_ITERATIONS: u32 = 1_000_000;

/// Why a `password_hash` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// Does not start with `$`: most likely a plain-text password.
    #[error("is not a password hash (plain-text passwords are refused; make a hash with `mqtt-http-publish passwd`)")]
    NotAHash,
    /// A `$...$` string of a scheme we do not verify.
    #[error("uses the unsupported scheme {0:?} (use argon2id, pbkdf2-sha256, pbkdf2-sha512, scrypt, bcrypt, or Mosquitto's $6$ or $7$)")]
    UnsupportedScheme(String),
    /// The scheme is known but the string is damaged.
    #[error("is a malformed {0} hash")]
    Malformed(&'static str),
}

impl StoredHash {
    /// Validates a hash string from the config.
    pub fn parse(text: &str) -> Result<StoredHash, HashError> {
        if !text.starts_with('$') {
            return Err(HashError::NotAHash);
        }
        let ident = text[1..].split('$').next().unwrap_or_default();
        let scheme = match ident {
            "argon2id" | "argon2i" | "argon2d" => Scheme::Argon2,
            "pbkdf2-sha256" | "pbkdf2-sha512" => Scheme::Pbkdf2,
            "scrypt" => Scheme::Scrypt,
            "2a" | "2b" | "2y" => Scheme::Bcrypt,
            "6" => Scheme::MosquittoSha512,
            "7" => Scheme::MosquittoPbkdf2,
            other => return Err(HashError::UnsupportedScheme(other.to_owned())),
        };
        let well_formed = match scheme {
            Scheme::Bcrypt => text.parse::<bcrypt::HashParts>().is_ok(),
            Scheme::MosquittoSha512 | Scheme::MosquittoPbkdf2 => mosquitto_parts(text).is_some(),
            _ => PasswordHash::new(text).is_ok_and(|h| h.hash.is_some() && h.salt.is_some()),
        };
        if !well_formed {
            return Err(HashError::Malformed(scheme.name()));
        }
        Ok(StoredHash { text: text.to_owned(), scheme })
    }

    /// Whether `password` matches. Slow by design: call it off the async runtime.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self.scheme {
            Scheme::Bcrypt => bcrypt::verify(password, &self.text).unwrap_or(false),
            Scheme::MosquittoSha512 | Scheme::MosquittoPbkdf2 => {
                let Some(parts) = mosquitto_parts(&self.text) else { return false };
                let computed: Vec<u8> = match parts.iterations {
                    None => Sha512::new().chain_update(password).chain_update(&parts.salt).finalize().to_vec(),
                    Some(rounds) => {
                        let mut out = vec![0u8; parts.hash.len()];
                        pbkdf2::pbkdf2_hmac::<Sha512>(password, &parts.salt, rounds, &mut out);
                        out
                    }
                };
                bool::from(computed.ct_eq(&parts.hash))
            }
            scheme => {
                let Ok(hash) = PasswordHash::new(&self.text) else {
                    return false;
                };
                match scheme {
                    Scheme::Argon2 => argon2::Argon2::default().verify_password(password, &hash).is_ok(),
                    Scheme::Pbkdf2 => pbkdf2::Pbkdf2.verify_password(password, &hash).is_ok(),
                    Scheme::Scrypt => scrypt::Scrypt.verify_password(password, &hash).is_ok(),
                    _ => unreachable!("handled above"),
                }
            }
        }
    }

    /// The hash as written in the config.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl Scheme {
    fn name(self) -> &'static str {
        match self {
            Scheme::Argon2 => "argon2",
            Scheme::Pbkdf2 => "pbkdf2",
            Scheme::Scrypt => "scrypt",
            Scheme::Bcrypt => "bcrypt",
            Scheme::MosquittoSha512 => "mosquitto sha512",
            Scheme::MosquittoPbkdf2 => "mosquitto sha512-pbkdf2",
        }
    }
}

impl fmt::Debug for StoredHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoredHash({})", self.scheme.name())
    }
}

/// The decoded fields of a `$6$` or `$7$` line.
struct MosquittoParts {
    iterations: Option<u32>,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

fn mosquitto_parts(text: &str) -> Option<MosquittoParts> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).ok();
    let fields: Vec<&str> = text.split('$').collect();
    let (iterations, salt, hash) = match fields.as_slice() {
        ["", "6", salt, hash] => (None, *salt, *hash),
        ["", "7", rounds, salt, hash] => {
            let rounds: u32 = rounds.parse().ok().filter(|r| (1..=MAX_MOSQUITTO_ITERATIONS).contains(r))?;
            (Some(rounds), *salt, *hash)
        }
        _ => return None,
    };
    let (salt, hash) = (b64(salt)?, b64(hash)?);
    (!salt.is_empty() && hash.len() == 64).then_some(MosquittoParts { iterations, salt, hash })
}

/// An argon2id PHC string of `password` with a random salt and the crate's
/// defaults (m=19456 KiB, t=2, p=1: OWASP's recommended minimum).
pub fn hash_argon2id(password: &[u8]) -> String {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).expect("the OS random number generator is available");
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt length");
    argon2::Argon2::default().hash_password(password, &salt).expect("default parameters are valid").to_string()
}

/// Verified in place of an unknown user's hash, so that an unknown user costs
/// what a wrong password costs. An argon2id hash with `passwd`'s parameters of
/// a random password that was thrown away.
pub const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$bm90LWEtcmVhbC11c2Vy$0FDEr8HgkdCZPE7sWx71xLaH7o6bvm0b3fA7QCsdzCc";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_from_passwd_verifies() {
        let hash = StoredHash::parse(&hash_argon2id(b"secret0")).unwrap();
        assert!(hash.verify(b"secret0"));
        assert!(!hash.verify(b"secret1"));
        assert!(hash.as_str().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
    }

    #[test]
    fn pbkdf2_sha256_and_sha512_verify() {
        for algorithm in [pbkdf2::Algorithm::Pbkdf2Sha256, pbkdf2::Algorithm::Pbkdf2Sha512] {
            let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
            let params = pbkdf2::Params { rounds: 1_000, output_length: 32 };
            let phc = pbkdf2::Pbkdf2
                .hash_password_customized(b"pw", Some(algorithm.ident()), None, params, &salt)
                .unwrap()
                .to_string();
            let hash = StoredHash::parse(&phc).unwrap();
            assert!(hash.verify(b"pw"), "{phc}");
            assert!(!hash.verify(b"px"), "{phc}");
        }
    }

    #[test]
    fn scrypt_verifies() {
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let params = scrypt::Params::new(10, 8, 1, 32).unwrap();
        let phc = scrypt::Scrypt.hash_password_customized(b"pw", None, None, params, &salt).unwrap().to_string();
        let hash = StoredHash::parse(&phc).unwrap();
        assert!(hash.verify(b"pw") && !hash.verify(b"px"));
    }

    #[test]
    fn bcrypt_verifies() {
        let text = bcrypt::hash("pw", 4).unwrap();
        let hash = StoredHash::parse(&text).unwrap();
        assert!(hash.verify(b"pw") && !hash.verify(b"px"));
    }

    #[test]
    fn mosquitto_passwd_lines_verify() {
        // Written by Debian's mosquitto_passwd 2.0.11 (-H sha512 and -H sha512-pbkdf2).
        let sha512 = StoredHash::parse(
            "$6$fx1fsGY4/jC2GxIS$bJ0Mbzv4L7+xm8xDj0oX0zpH/2bw5rw+IEMu6iD/FSAUV4tX/ZAmFk1/7s/OSpLL4/SZCZNQSYBKMa1LLrYQiw==",
        )
        .unwrap();
        assert!(sha512.verify(b"secret6") && !sha512.verify(b"secret7"));
        let pbkdf2 = StoredHash::parse(
            "$7$101$4/3d3VnguISvBsJY$utnP2DhgHQKIeiqO92bf5HdVAdMWcNOW9YABmNH76SNJUxb0HKkP9J1/homolJXTnOBPDU/Fz+nKectYs4f8nw==",
        )
        .unwrap();
        assert!(pbkdf2.verify(b"secret7") && !pbkdf2.verify(b"secret6"));
        assert_eq!(StoredHash::parse("$7$0$c2FsdA==$aGFzaA=="), Err(HashError::Malformed("mosquitto sha512-pbkdf2")));
        assert_eq!(StoredHash::parse("$6$c2FsdA==$c2hvcnQ="), Err(HashError::Malformed("mosquitto sha512")));
    }

    #[test]
    fn plain_text_and_unknown_schemes_are_refused() {
        assert_eq!(StoredHash::parse("secret0"), Err(HashError::NotAHash));
        assert_eq!(StoredHash::parse(""), Err(HashError::NotAHash));
        assert_eq!(StoredHash::parse("$1$abc$def"), Err(HashError::UnsupportedScheme("1".into())));
        assert_eq!(StoredHash::parse("$pbkdf2$i=1$abc$def"), Err(HashError::UnsupportedScheme("pbkdf2".into())));
        assert_eq!(StoredHash::parse("$argon2id$v=19$garbage"), Err(HashError::Malformed("argon2")));
        assert_eq!(StoredHash::parse("$2b$04$short"), Err(HashError::Malformed("bcrypt")));
    }

    #[test]
    fn the_dummy_hash_is_a_valid_argon2id_hash() {
        let dummy = StoredHash::parse(DUMMY_HASH).unwrap();
        assert!(!dummy.verify(b""));
        assert!(!dummy.verify(b"secret0"));
    }

    #[test]
    fn debug_output_hides_the_hash() {
        let hash = StoredHash::parse(DUMMY_HASH).unwrap();
        assert_eq!(format!("{hash:?}"), "StoredHash(argon2)");
    }
}
