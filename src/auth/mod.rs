//! Who is calling: HTTP Basic against the config's password hashes, or a
//! verified client certificate whose Common Name is the client_id.

pub mod password;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use http::header::AUTHORIZATION;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::contract::basic::{parse_basic, BasicCredentials, BasicError};
use crate::contract::query::is_valid_client_id;
use crate::contract::{ApiError, ErrorCode, HttpRequest, MessageId, PublishOptions};

pub use self::password::{hash_argon2id, HashError, StoredHash};

/// The users of the config, by name.
pub type Users = HashMap<String, StoredHash>;

/// The caller, as far as the ACL is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The Basic user name, verified; `None` for a certificate alone, since a
    /// `username` query value proves nothing and must not match rules.
    pub username: Option<String>,
    /// The certificate's CN, else the query's `client_id`, else `http-{message id}`.
    pub client_id: String,
    /// A Basic header was verified.
    pub basic: bool,
    /// A client certificate was verified by the TLS terminator.
    pub certificate: bool,
}

/// Entries kept in the credential cache before it starts over.
const CACHE_CAPACITY: usize = 10_000;

/// Checks credentials; keeps the verdict of recent slow hashes.
pub struct Authenticator {
    dummy: StoredHash,
    cache: CredentialCache,
    /// Slow hashes running at once, at most one per core: each argon2id
    /// verification holds 19 MiB, so a burst of logins (or a guessing attack)
    /// queues here instead of growing the process by gigabytes.
    hashing: Arc<tokio::sync::Semaphore>,
    /// Verifications in progress by fingerprint: concurrent requests with the
    /// same credentials wait for the one hash instead of each paying for it.
    in_flight: Gates,
    /// Slow hashes computed so far (what the cache and the gates save is visible here).
    slow_hashes: AtomicUsize,
}

impl Default for Authenticator {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Authenticator {
            dummy: StoredHash::parse(password::DUMMY_HASH).expect("the dummy hash is valid"),
            cache: CredentialCache::new(),
            hashing: Arc::new(tokio::sync::Semaphore::new(cores)),
            in_flight: Mutex::new(HashMap::new()),
            slow_hashes: AtomicUsize::new(0),
        }
    }
}

impl Authenticator {
    /// Establishes the caller's identity, or answers 401 (400 for a certificate
    /// whose CN cannot be a client_id). `lookup` finds a user's hash; its error
    /// (a config store outage) is passed through, so an outage never looks like
    /// a wrong password.
    pub async fn authenticate<F, Fut>(
        &self,
        request: &HttpRequest,
        options: &PublishOptions,
        message_id: MessageId,
        lookup: F,
    ) -> Result<Identity, ApiError>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<Option<StoredHash>, ApiError>>,
    {
        let basic = match request.headers.get(AUTHORIZATION) {
            None => None,
            Some(header) => Some(parse_basic(header).map_err(|e| match e {
                BasicError::UnsupportedScheme => ApiError::unauthorized(
                    ErrorCode::UnsupportedAuthorizationScheme,
                    "only Basic authentication is supported",
                ),
                BasicError::Malformed => ApiError::unauthorized(
                    ErrorCode::InvalidAuthorizationHeader,
                    "the Authorization header is not Basic base64(username:password)",
                ),
            })?),
        };
        let certificate_cn = match &request.client_certificate {
            None => None,
            Some(cert) => {
                let cn = cert.common_name.as_deref().ok_or_else(|| {
                    ApiError::unauthorized(
                        ErrorCode::CertificateWithoutCommonName,
                        "the client certificate has no Common Name",
                    )
                })?;
                if !is_valid_client_id(cn) {
                    return Err(ApiError::bad_request(
                        ErrorCode::InvalidClientId,
                        "the client certificate's Common Name is not a valid client_id (1 to 128 of A-Z a-z 0-9 _ . : @ -)",
                    ));
                }
                Some(cn.to_owned())
            }
        };
        if basic.is_none() && certificate_cn.is_none() {
            return Err(ApiError::unauthorized(
                ErrorCode::MissingCredentials,
                "send an Authorization: Basic header or a client certificate",
            ));
        }
        if let Some(credentials) = &basic {
            let stored = lookup(credentials.username.clone()).await?;
            if !self.check_password(credentials, stored.as_ref()).await {
                return Err(ApiError::unauthorized(
                    ErrorCode::AuthenticationFailed,
                    "the user name or password is wrong",
                ));
            }
        }
        let client_id = match (certificate_cn, &options.client_id) {
            (Some(cn), Some(asked)) if &cn != asked => {
                return Err(ApiError::unauthorized(
                    ErrorCode::ClientIdMismatch,
                    "client_id must equal the client certificate's Common Name",
                ))
            }
            (Some(cn), _) => cn,
            (None, Some(asked)) => asked.clone(),
            (None, None) => format!("http-{message_id}"),
        };
        Ok(Identity {
            certificate: request.client_certificate.is_some(),
            basic: basic.is_some(),
            username: basic.map(|c| c.username),
            client_id,
        })
    }

    /// Verifies a password against the user's hash, or against a dummy hash
    /// for an unknown user so that both cost one slow hash.
    async fn check_password(&self, credentials: &BasicCredentials, stored: Option<&StoredHash>) -> bool {
        let Some(stored) = stored else {
            self.slow_verify(&self.dummy, &credentials.password).await;
            return false;
        };
        let fingerprint = self.cache.fingerprint(credentials, stored);
        if self.cache.contains(&credentials.username, &fingerprint) {
            return true;
        }
        let ticket = GateTicket::take(&self.in_flight, fingerprint);
        let ok = {
            let _turn = ticket.gate().lock().await;
            // Whoever held the gate before us may have verified these very credentials.
            self.cache.contains(&credentials.username, &fingerprint)
                || self.slow_verify(stored, &credentials.password).await
        };
        if ok {
            self.cache.insert(&credentials.username, fingerprint);
        }
        ok
    }

    /// One slow hash on the blocking pool, within the concurrency bound. The permit
    /// goes with the hash: a request abandoned while it runs (a deadline, a client
    /// gone) leaves it running, and it keeps its place in the bound until it ends.
    async fn slow_verify(&self, hash: &StoredHash, password: &str) -> bool {
        let permit = Arc::clone(&self.hashing).acquire_owned().await.expect("the semaphore is never closed");
        self.slow_hashes.fetch_add(1, Ordering::Relaxed);
        let (hash, password) = (hash.clone(), password.to_owned());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            hash.verify(password.as_bytes())
        })
        .await
        .unwrap_or(false)
    }
}

type Gates = Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>;

/// A clone of one fingerprint's gate, given back when dropped: also when the
/// request is abandoned mid-hash (its deadline passed, its client went away).
/// Every clone is taken and given back under the map's lock, so when the map's
/// own is the last one left, nobody waits on the gate and it can go.
struct GateTicket<'a> {
    gates: &'a Gates,
    fingerprint: [u8; 32],
    gate: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl<'a> GateTicket<'a> {
    fn take(gates: &'a Gates, fingerprint: [u8; 32]) -> GateTicket<'a> {
        let mut map = gates.lock().unwrap_or_else(|e| e.into_inner());
        let gate = Arc::clone(map.entry(fingerprint).or_default());
        GateTicket { gates, fingerprint, gate: Some(gate) }
    }

    fn gate(&self) -> &tokio::sync::Mutex<()> {
        self.gate.as_ref().expect("held until dropped")
    }
}

impl Drop for GateTicket<'_> {
    fn drop(&mut self) {
        let mut map = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        drop(self.gate.take());
        if map.get(&self.fingerprint).is_some_and(|g| Arc::strong_count(g) == 1) {
            map.remove(&self.fingerprint);
        }
    }
}

/// Remembers credentials that verified, so a warm process pays the slow hash
/// once per user and password. Holds no password: each entry is an HMAC, under
/// a key drawn at start, of the user, the stored hash and the password. A new
/// password or a new stored hash gives another fingerprint and so misses.
struct CredentialCache {
    key: [u8; 32],
    verified: Mutex<HashMap<String, [u8; 32]>>,
}

impl CredentialCache {
    fn new() -> Self {
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key).expect("the OS random number generator is available");
        CredentialCache { key, verified: Mutex::new(HashMap::new()) }
    }

    fn fingerprint(&self, credentials: &BasicCredentials, stored: &StoredHash) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        for part in [credentials.username.as_bytes(), stored.as_str().as_bytes(), credentials.password.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    fn contains(&self, username: &str, fingerprint: &[u8; 32]) -> bool {
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        verified.get(username).is_some_and(|known| bool::from(known.ct_eq(fingerprint)))
    }

    fn insert(&self, username: &str, fingerprint: [u8; 32]) {
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= CACHE_CAPACITY && !verified.contains_key(username) {
            verified.clear();
        }
        verified.insert(username.to_owned(), fingerprint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{ClientCertificate, RequestPath};
    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue, Method};
    use std::time::Duration;

    fn request(authorization: Option<&str>, cn: Option<Option<&str>>) -> HttpRequest {
        let mut headers = HeaderMap::new();
        if let Some(v) = authorization {
            headers.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        HttpRequest {
            method: Method::POST,
            path: RequestPath::Encoded("/topics/home".into()),
            query: vec![],
            headers,
            body: Bytes::new(),
            source_ip: None,
            client_certificate: cn.map(|cn| ClientCertificate { common_name: cn.map(str::to_owned) }),
        }
    }

    fn options(client_id: Option<&str>) -> PublishOptions {
        PublishOptions {
            qos: 1,
            retain: false,
            client_id: client_id.map(str::to_owned),
            username: Some("sample-user".into()),
            properties: Default::default(),
        }
    }

    fn users() -> Users {
        // Cheap bcrypt keeps the unit tests fast; the argon2id path is tested in password.rs.
        HashMap::from([("user0".to_owned(), StoredHash::parse(&bcrypt::hash("secret0", 4).unwrap()).unwrap())])
    }

    const USER0: &str = "Basic dXNlcjA6c2VjcmV0MA==";

    async fn auth(request: HttpRequest, client_id: Option<&str>) -> Result<Identity, ApiError> {
        let users = users();
        Authenticator::default()
            .authenticate(&request, &options(client_id), MessageId::next(), |name| async move {
                Ok(users.get(&name).cloned())
            })
            .await
    }

    #[tokio::test]
    async fn basic_user_is_the_header_user_not_the_query_username() {
        let id = auth(request(Some(USER0), None), Some("curl-x")).await.unwrap();
        assert_eq!(id.username.as_deref(), Some("user0"));
        assert_eq!(id.client_id, "curl-x");
        assert!(id.basic && !id.certificate);
    }

    #[tokio::test]
    async fn default_client_id_is_http_and_the_message_id() {
        let id = auth(request(Some(USER0), None), None).await.unwrap();
        assert!(id.client_id.starts_with("http-") && id.client_id.len() == 5 + 32, "{}", id.client_id);
        assert!(is_valid_client_id(&id.client_id));
    }

    #[tokio::test]
    async fn unknown_user_and_wrong_password_get_the_same_answer() {
        let wrong = auth(request(Some("Basic dXNlcjA6c2VjcmV0MQ=="), None), None).await.unwrap_err();
        let unknown = auth(request(Some("Basic dXNlcjE6c2VjcmV0MA=="), None), None).await.unwrap_err();
        assert_eq!(wrong, unknown);
        assert_eq!(wrong.code(), "authentication_failed");
    }

    #[tokio::test]
    async fn no_or_malformed_credentials_are_401() {
        assert_eq!(auth(request(None, None), None).await.unwrap_err().code(), "missing_credentials");
        assert_eq!(
            auth(request(Some("Basic xx"), None), None).await.unwrap_err().code(),
            "invalid_authorization_header"
        );
        assert_eq!(
            auth(request(Some("Bearer x"), None), None).await.unwrap_err().code(),
            "unsupported_authorization_scheme"
        );
    }

    #[tokio::test]
    async fn a_store_outage_is_passed_through_not_turned_into_401() {
        let outage = ApiError::Unavailable { retry_after: 5 };
        let result = Authenticator::default()
            .authenticate(&request(Some(USER0), None), &options(None), MessageId::next(), |_| async {
                Err(ApiError::Unavailable { retry_after: 5 })
            })
            .await;
        assert_eq!(result, Err(outage));
    }

    #[tokio::test]
    async fn a_certificate_makes_its_cn_the_client_id() {
        let id = auth(request(None, Some(Some("device-7"))), None).await.unwrap();
        assert_eq!((id.client_id.as_str(), id.username, id.certificate), ("device-7", None, true));
        assert!(auth(request(None, Some(Some("device-7"))), Some("device-7")).await.is_ok());
        let e = auth(request(None, Some(Some("device-7"))), Some("device-8")).await.unwrap_err();
        assert_eq!(e.code(), "client_id_mismatch");
        assert_eq!(auth(request(None, Some(None)), None).await.unwrap_err().code(), "certificate_without_common_name");
        assert_eq!(auth(request(None, Some(Some("my device"))), None).await.unwrap_err().code(), "invalid_client_id");
    }

    #[tokio::test]
    async fn a_certificate_and_basic_together_need_both_to_verify() {
        let id = auth(request(Some(USER0), Some(Some("device-7"))), None).await.unwrap();
        assert_eq!((id.username.as_deref(), id.client_id.as_str()), (Some("user0"), "device-7"));
        assert!(id.basic && id.certificate);
        let bad = request(Some("Basic dXNlcjA6c2VjcmV0MQ=="), Some(Some("device-7")));
        assert_eq!(auth(bad, None).await.unwrap_err().code(), "authentication_failed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_the_same_credentials_pays_one_slow_hash() {
        let auth = Arc::new(Authenticator::default());
        let stored = StoredHash::parse(&bcrypt::hash("pw", 4).unwrap()).unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (auth, stored) = (Arc::clone(&auth), stored.clone());
                tokio::spawn(async move {
                    let creds = BasicCredentials { username: "u".into(), password: "pw".into() };
                    auth.check_password(&creds, Some(&stored)).await
                })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap());
        }
        assert_eq!(auth.slow_hashes.load(Ordering::Relaxed), 1);
        assert!(auth.in_flight.lock().unwrap().is_empty(), "no gate is left behind");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verifications_abandoned_mid_hash_leave_no_gate_behind() {
        // A deadline or a departed client drops the request's future while it waits on a hash.
        let auth = Authenticator::default();
        let stored = StoredHash::parse(&bcrypt::hash("pw", 10).unwrap()).unwrap();
        for i in 0..4 {
            let creds = BasicCredentials { username: format!("u{i}"), password: "pw".into() };
            let abandoned = tokio::time::timeout(Duration::from_millis(1), auth.check_password(&creds, Some(&stored)));
            assert!(abandoned.await.is_err(), "a cost-10 bcrypt takes longer than 1 ms");
        }
        assert!(auth.in_flight.lock().unwrap().is_empty(), "no gate is left behind");
        // AND the abandoned hashes keep their places in the bound until they end
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        assert!(auth.hashing.available_permits() < cores, "a hash still running holds its permit");
        let settled = tokio::time::Instant::now() + Duration::from_secs(10);
        while auth.hashing.available_permits() < cores {
            assert!(tokio::time::Instant::now() < settled, "the permits come back when the hashes end");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn the_cache_serves_a_verified_password_and_misses_a_changed_hash() {
        let auth = Authenticator::default();
        let creds = BasicCredentials { username: "u".into(), password: "p".into() };
        let first = StoredHash::parse(&bcrypt::hash("p", 4).unwrap()).unwrap();
        assert!(auth.check_password(&creds, Some(&first)).await);
        let fp = auth.cache.fingerprint(&creds, &first);
        assert!(auth.cache.contains("u", &fp), "a verified password is cached");
        let changed = StoredHash::parse(&bcrypt::hash("q", 4).unwrap()).unwrap();
        assert!(!auth.cache.contains("u", &auth.cache.fingerprint(&creds, &changed)), "a new hash misses");
        assert!(!auth.check_password(&creds, Some(&changed)).await, "the old password no longer works");
        let wrong = BasicCredentials { username: "u".into(), password: "x".into() };
        assert!(!auth.cache.contains("u", &auth.cache.fingerprint(&wrong, &first)));
    }
}
