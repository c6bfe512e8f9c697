//! Who is calling: HTTP Basic against the config's password hashes, or a
//! verified client certificate whose Common Name is the client_id.

pub mod memory;
pub mod password;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use http::header::AUTHORIZATION;
use moka::future::Cache;
use sha2::Sha256;

use crate::contract::basic::{parse_basic, BasicCredentials, BasicError};
use crate::contract::{ApiError, ClientId, ErrorCode, HttpRequest, MessageId};

pub use self::password::{hash_argon2id, HashError, StoredHash};

/// The users of the config, by name.
pub type Users = HashMap<String, StoredHash>;

/// Who is calling, as proved: made once per request, and the one name its
/// quotas and its `Idempotency-Key` records go by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A user whose Basic password verified (with or without a certificate).
    User(String),
    /// A device whose client certificate, alone, verified: its CN.
    Device(ClientId),
}

impl Principal {
    /// The verified user name; none for a device, since a `username` query
    /// value proves nothing and must not match rules.
    pub fn username(&self) -> Option<&str> {
        match self {
            Principal::User(name) => Some(name),
            Principal::Device(_) => None,
        }
    }

    /// Whose per-user quota a request spends: the user's name, or the device's CN.
    pub fn quota_key(&self) -> &str {
        match self {
            Principal::User(name) => name,
            Principal::Device(cn) => cn.as_str(),
        }
    }

    /// The scope of the caller's `Idempotency-Key` records: `user:NAME` or `cn:NAME`.
    pub fn key_scope(&self) -> String {
        match self {
            Principal::User(name) => format!("user:{name}"),
            Principal::Device(cn) => format!("cn:{cn}"),
        }
    }
}

/// Where a request's client id comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIdFrom {
    /// A verified client certificate's CN (which `client_id` may only repeat).
    Certificate,
    /// The request's `client_id`.
    Request,
    /// Made by the server from the message id: `http-{message id}`.
    Server,
}

/// The caller, as far as the ACL is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Who proved who they are.
    pub principal: Principal,
    /// The client id in effect.
    pub client_id: ClientId,
    /// Where it comes from.
    pub client_id_from: ClientIdFrom,
}

impl Identity {
    /// The verified Basic user name, if any.
    pub fn username(&self) -> Option<&str> {
        self.principal.username()
    }

    /// A Basic header was verified.
    pub fn basic(&self) -> bool {
        matches!(self.principal, Principal::User(_))
    }

    /// A client certificate was verified by the TLS terminator (its CN is then the client id).
    pub fn certificate(&self) -> bool {
        self.client_id_from == ClientIdFrom::Certificate
    }
}

/// Verified credentials kept before the least recently used go.
const CACHE_CAPACITY: u64 = 10_000;
/// A verified credential unused this long is forgotten (a new hash costs one slow check).
const CACHE_IDLE: Duration = Duration::from_secs(3600);

/// Why a password check did not pass. Not cached: only verified credentials are.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("the password does not match the stored hash")]
    Mismatch,
    /// The caller whose load this was may not cost another slow hash now (its
    /// source address is over its budget): refused before the hash.
    #[error("the password was not checked")]
    NotChecked(ApiError),
}

/// Checks credentials; keeps the verdict of recent slow hashes.
pub struct Authenticator {
    dummy: StoredHash,
    /// The key of the credential fingerprints, drawn at start.
    fingerprint_key: [u8; 32],
    /// Fingerprints of credentials that verified (moka: size-bounded, idle entries
    /// expire, and concurrent checks of the same credentials share one slow hash).
    verified: Cache<[u8; 32], ()>,
    /// Slow hashes running at once, at most one per core: each argon2id
    /// verification holds 19 MiB, so a burst of logins (or a guessing attack)
    /// queues here instead of growing the process by gigabytes.
    hashing: Arc<tokio::sync::Semaphore>,
    /// Slow hashes computed so far (what the cache saves is visible here).
    slow_hashes: AtomicUsize,
}

impl Default for Authenticator {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut fingerprint_key = [0u8; 32];
        getrandom::getrandom(&mut fingerprint_key).expect("the OS random number generator is available");
        Authenticator {
            dummy: StoredHash::parse(password::DUMMY_HASH).expect("the dummy hash is valid"),
            fingerprint_key,
            verified: Cache::builder().max_capacity(CACHE_CAPACITY).time_to_idle(CACHE_IDLE).build(),
            hashing: Arc::new(tokio::sync::Semaphore::new(cores)),
            slow_hashes: AtomicUsize::new(0),
        }
    }
}

impl Authenticator {
    /// Establishes the caller's identity, or answers 401 (400 for a certificate
    /// whose CN cannot be a client_id). `asked` is the request's `client_id`.
    /// `lookup` finds a user's hash; its error (a config store outage) is passed
    /// through, so an outage never looks like a wrong password. `admit_hash` is
    /// asked before each slow hash (credentials not in the cache); its error is
    /// the answer instead of the hash.
    pub async fn authenticate<B, F, Fut>(
        &self,
        request: &HttpRequest<B>,
        asked: Option<&ClientId>,
        message_id: MessageId,
        lookup: F,
        admit_hash: impl Fn() -> Result<(), ApiError>,
    ) -> Result<Identity, ApiError>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<Option<StoredHash>, ApiError>>,
    {
        let basic = basic_credentials(request)?;
        let certificate_cn = certificate_client_id(request)?;
        let principal = match (basic, &certificate_cn) {
            (Some(credentials), _) => {
                let stored = lookup(credentials.username.clone()).await?;
                self.check_password(&credentials, stored.as_ref(), admit_hash).await?;
                Principal::User(credentials.username)
            }
            (None, Some(cn)) => Principal::Device(cn.clone()),
            (None, None) => {
                return Err(ApiError::unauthorized(
                    ErrorCode::MissingCredentials,
                    "send an Authorization: Basic header or a client certificate",
                ))
            }
        };
        let (client_id, client_id_from) = client_id(certificate_cn, asked, message_id)?;
        Ok(Identity { principal, client_id, client_id_from })
    }

    /// Verifies a password against the user's hash, or against a dummy hash
    /// for an unknown user so that both cost one slow hash (and one admission).
    async fn check_password(
        &self,
        credentials: &BasicCredentials,
        stored: Option<&StoredHash>,
        admit_hash: impl Fn() -> Result<(), ApiError>,
    ) -> Result<(), ApiError> {
        let wrong = || ApiError::unauthorized(ErrorCode::AuthenticationFailed, "the user name or password is wrong");
        let Some(stored) = stored else {
            crate::metrics::credential_cache(false);
            admit_hash()?;
            self.slow_verify(&self.dummy, &credentials.password).await;
            return Err(wrong());
        };
        // The key is an HMAC under a secret drawn at start: looking it up reveals
        // nothing an attacker could time, and the cache holds no password.
        let fingerprint = self.fingerprint(credentials, stored);
        // Concurrent checks of the same credentials share one load, and so one hash
        // and one admission: the first caller's. moka hands that load's error to every
        // caller that joined it, so a refusal is an answer only for the caller whose
        // admission refused; one that joined another's refused load tries once more,
        // then (another refused load in its way again) is admitted on its own.
        let mut hashed = false;
        for _ in 0..2 {
            let ran = AtomicBool::new(false);
            let verify = async {
                ran.store(true, Ordering::Relaxed);
                admit_hash().map_err(Refused::NotChecked)?;
                self.verify(stored, &credentials.password).await
            };
            let verdict = self.verified.try_get_with(fingerprint, verify).await;
            hashed |= ran.load(Ordering::Relaxed);
            match verdict.as_ref().map_err(|e| &**e) {
                Ok(()) => return self.counted(hashed, Ok(())),
                Err(Refused::Mismatch) => return self.counted(hashed, Err(wrong())),
                Err(Refused::NotChecked(answer)) if ran.load(Ordering::Relaxed) => {
                    return self.counted(hashed, Err(answer.clone()))
                }
                Err(Refused::NotChecked(_)) => {}
            }
        }
        admit_hash()?;
        let verify = self.verify(stored, &credentials.password);
        self.counted(true, self.verified.try_get_with(fingerprint, verify).await.map(|_| ()).map_err(|_| wrong()))
    }

    /// A slow check's verdict as the cache keeps it: only a match is cached.
    async fn verify(&self, stored: &StoredHash, password: &str) -> Result<(), Refused> {
        match self.slow_verify(stored, password).await {
            true => Ok(()),
            false => Err(Refused::Mismatch),
        }
    }

    /// Counts a check as a cache hit, unless this caller started a load (`hashed`).
    fn counted<T>(&self, hashed: bool, result: T) -> T {
        crate::metrics::credential_cache(!hashed);
        result
    }

    /// An HMAC of the user, the stored hash and the password: a new password
    /// or a new stored hash gives another fingerprint and so misses the cache.
    fn fingerprint(&self, credentials: &BasicCredentials, stored: &StoredHash) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.fingerprint_key).expect("HMAC takes any key length");
        for part in [credentials.username.as_bytes(), stored.as_str().as_bytes(), credentials.password.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
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
            let started = std::time::Instant::now();
            let verified = hash.verify(password.as_bytes());
            crate::metrics::password_hash(started.elapsed());
            verified
        })
        .await
        .unwrap_or(false)
    }
}

/// The Basic credentials of the Authorization header, if there is one.
fn basic_credentials<B>(request: &HttpRequest<B>) -> Result<Option<BasicCredentials>, ApiError> {
    let Some(header) = request.headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    parse_basic(header).map(Some).map_err(|e| match e {
        BasicError::UnsupportedScheme => {
            ApiError::unauthorized(ErrorCode::UnsupportedAuthorizationScheme, "only Basic authentication is supported")
        }
        BasicError::Malformed => ApiError::unauthorized(
            ErrorCode::InvalidAuthorizationHeader,
            "the Authorization header is not Basic base64(username:password)",
        ),
    })
}

/// The verified client certificate's Common Name as a client id, if there is a certificate.
fn certificate_client_id<B>(request: &HttpRequest<B>) -> Result<Option<ClientId>, ApiError> {
    let Some(certificate) = &request.client_certificate else {
        return Ok(None);
    };
    let cn = certificate.common_name.as_deref().ok_or_else(|| {
        ApiError::unauthorized(ErrorCode::CertificateWithoutCommonName, "the client certificate has no Common Name")
    })?;
    ClientId::parse(cn).map(Some).ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::InvalidClientId,
            "the client certificate's Common Name is not a valid client_id (1 to 128 of A-Z a-z 0-9 _ . : @ -)",
        )
    })
}

/// The certificate's CN, which the query's `client_id` may only repeat; else the
/// query's; else one made from the message id.
fn client_id(
    certificate_cn: Option<ClientId>,
    asked: Option<&ClientId>,
    message_id: MessageId,
) -> Result<(ClientId, ClientIdFrom), ApiError> {
    match (certificate_cn, asked) {
        (Some(cn), Some(asked)) if &cn != asked => Err(ApiError::unauthorized(
            ErrorCode::ClientIdMismatch,
            "client_id must equal the client certificate's Common Name",
        )),
        (Some(cn), _) => Ok((cn, ClientIdFrom::Certificate)),
        (None, Some(asked)) => Ok((asked.clone(), ClientIdFrom::Request)),
        (None, None) => Ok((default_client_id(message_id), ClientIdFrom::Server)),
    }
}

/// The client id of a caller that gave none: `http-{message id}`.
pub fn default_client_id(message_id: MessageId) -> ClientId {
    ClientId::parse(&format!("http-{message_id}")).expect("http- and 32 hex digits make a valid client id")
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

    fn asked(client_id: Option<&str>) -> Option<ClientId> {
        client_id.map(|id| ClientId::parse(id).unwrap())
    }

    fn users() -> Users {
        // Cheap bcrypt keeps the unit tests fast; the argon2id path is tested in password.rs.
        HashMap::from([("user0".to_owned(), StoredHash::parse(&bcrypt::hash("secret0", 4).unwrap()).unwrap())])
    }

    const USER0: &str = "Basic dXNlcjA6c2VjcmV0MA==";

    async fn auth(request: HttpRequest, client_id: Option<&str>) -> Result<Identity, ApiError> {
        let users = users();
        Authenticator::default()
            .authenticate(
                &request,
                asked(client_id).as_ref(),
                MessageId::next(),
                |name| async move { Ok(users.get(&name).cloned()) },
                || Ok(()),
            )
            .await
    }

    #[tokio::test]
    async fn basic_user_is_the_header_user_not_the_query_username() {
        let id = auth(request(Some(USER0), None), Some("curl-x")).await.unwrap();
        assert_eq!(id.username(), Some("user0"));
        assert_eq!(id.client_id, "curl-x");
        assert!(id.basic() && !id.certificate());
    }

    #[tokio::test]
    async fn default_client_id_is_http_and_the_message_id() {
        let id = auth(request(Some(USER0), None), None).await.unwrap();
        let id = id.client_id.as_str();
        assert!(id.starts_with("http-") && id.len() == 5 + 32, "{id}");
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
            .authenticate(
                &request(Some(USER0), None),
                None,
                MessageId::next(),
                |_| async { Err(ApiError::Unavailable { retry_after: 5 }) },
                || Ok(()),
            )
            .await;
        assert_eq!(result, Err(outage));
    }

    #[tokio::test]
    async fn a_certificate_makes_its_cn_the_client_id() {
        let id = auth(request(None, Some(Some("device-7"))), None).await.unwrap();
        assert_eq!((id.client_id.as_str(), id.username(), id.certificate()), ("device-7", None, true));
        assert!(auth(request(None, Some(Some("device-7"))), Some("device-7")).await.is_ok());
        let e = auth(request(None, Some(Some("device-7"))), Some("device-8")).await.unwrap_err();
        assert_eq!(e.code(), "client_id_mismatch");
        assert_eq!(auth(request(None, Some(None)), None).await.unwrap_err().code(), "certificate_without_common_name");
        assert_eq!(auth(request(None, Some(Some("my device"))), None).await.unwrap_err().code(), "invalid_client_id");
    }

    #[tokio::test]
    async fn a_certificate_and_basic_together_need_both_to_verify() {
        let id = auth(request(Some(USER0), Some(Some("device-7"))), None).await.unwrap();
        assert_eq!((id.username(), id.client_id.as_str()), (Some("user0"), "device-7"));
        assert!(id.basic() && id.certificate());
        let bad = request(Some("Basic dXNlcjA6c2VjcmV0MQ=="), Some(Some("device-7")));
        assert_eq!(auth(bad, None).await.unwrap_err().code(), "authentication_failed");
    }

    impl Authenticator {
        /// Whether the password verifies, with every hash admitted.
        async fn check(&self, credentials: &BasicCredentials, stored: Option<&StoredHash>) -> bool {
            self.check_password(credentials, stored, || Ok(())).await.is_ok()
        }
    }

    #[tokio::test]
    async fn a_hash_refused_admission_is_not_computed_and_a_cached_password_needs_none() {
        let auth = Authenticator::default();
        let stored = StoredHash::parse(&bcrypt::hash("pw", 4).unwrap()).unwrap();
        let creds = BasicCredentials { username: "u".into(), password: "pw".into() };
        let refusal = ApiError::TooManyLoginAttempts { retry_after: 3 };
        let refuse = || Err(refusal.clone());
        // GIVEN admission refused: the answer is the refusal, for a known and an unknown user, with no hash
        assert_eq!(auth.check_password(&creds, Some(&stored), refuse).await, Err(refusal.clone()));
        assert_eq!(auth.check_password(&creds, None, refuse).await, Err(refusal.clone()));
        assert_eq!(auth.slow_hashes.load(Ordering::Relaxed), 0);
        // WHEN the password is verified once (admitted), THEN later checks ask no admission
        assert!(auth.check(&creds, Some(&stored)).await);
        assert_eq!(auth.check_password(&creds, Some(&stored), refuse).await, Ok(()));
        assert_eq!(auth.slow_hashes.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_caller_s_refusal_is_never_another_caller_s_answer() {
        // Two callers with the same credentials at once, from an address over its budget
        // and from one within it: only the first is refused.
        let auth = Arc::new(Authenticator::default());
        let stored = StoredHash::parse(&bcrypt::hash("pw", 8).unwrap()).unwrap();
        let refusal = ApiError::TooManyLoginAttempts { retry_after: 3 };
        let callers: Vec<_> = (0..16)
            .map(|i| {
                let (auth, stored, refusal) = (Arc::clone(&auth), stored.clone(), refusal.clone());
                tokio::spawn(async move {
                    let creds = BasicCredentials { username: "u".into(), password: "pw".into() };
                    let refused = i % 2 == 0;
                    let admit = || if refused { Err(refusal.clone()) } else { Ok(()) };
                    (refused, auth.check_password(&creds, Some(&stored), admit).await)
                })
            })
            .collect();
        for caller in callers {
            let (refused, answer) = caller.await.unwrap();
            if refused {
                // Refused, unless the others' hash had verified the password by then (cached: no check).
                assert!(answer == Err(refusal.clone()) || answer == Ok(()), "{answer:?}");
            } else {
                assert_eq!(answer, Ok(()), "an admitted caller never gets another's refusal");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_the_same_credentials_from_one_address_spends_one_check() {
        // A fleet's first requests with one user, at once, from one address with one check left.
        let auth = Arc::new(Authenticator::default());
        let stored = StoredHash::parse(&bcrypt::hash("pw", 8).unwrap()).unwrap();
        let spent = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..16)
            .map(|_| {
                let (auth, stored, spent) = (Arc::clone(&auth), stored.clone(), Arc::clone(&spent));
                tokio::spawn(async move {
                    let creds = BasicCredentials { username: "u".into(), password: "pw".into() };
                    let admit = || match spent.fetch_add(1, Ordering::SeqCst) {
                        0 => Ok(()),
                        _ => Err(ApiError::TooManyLoginAttempts { retry_after: 1 }),
                    };
                    auth.check_password(&creds, Some(&stored), admit).await
                })
            })
            .collect();
        for caller in callers {
            assert_eq!(caller.await.unwrap(), Ok(()), "every caller shares the one admitted hash");
        }
        assert_eq!(spent.load(Ordering::SeqCst), 1, "one check spent for the burst");
        assert_eq!(auth.slow_hashes.load(Ordering::Relaxed), 1);
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
                    auth.check(&creds, Some(&stored)).await
                })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap());
        }
        assert_eq!(auth.slow_hashes.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verifications_abandoned_mid_hash_block_no_later_check() {
        // A deadline or a departed client drops the request's future while it waits on a hash.
        let auth = Authenticator::default();
        let stored = StoredHash::parse(&bcrypt::hash("pw", 10).unwrap()).unwrap();
        for i in 0..4 {
            let creds = BasicCredentials { username: format!("u{i}"), password: "pw".into() };
            let abandoned = tokio::time::timeout(Duration::from_millis(1), auth.check(&creds, Some(&stored)));
            assert!(abandoned.await.is_err(), "a cost-10 bcrypt takes longer than 1 ms");
        }
        // THEN the abandoned hashes keep their places in the bound until they end
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        assert!(auth.hashing.available_permits() < cores, "a hash still running holds its permit");
        let settled = tokio::time::Instant::now() + Duration::from_secs(10);
        while auth.hashing.available_permits() < cores {
            assert!(tokio::time::Instant::now() < settled, "the permits come back when the hashes end");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // AND the same credentials verify afterwards: nothing abandoned holds their entry
        let creds = BasicCredentials { username: "u0".into(), password: "pw".into() };
        let later = tokio::time::timeout(Duration::from_secs(10), auth.check(&creds, Some(&stored)));
        assert!(later.await.expect("not stuck behind an abandoned check"));
    }

    #[tokio::test]
    async fn the_cache_serves_a_verified_password_and_misses_a_changed_hash() {
        let auth = Authenticator::default();
        let creds = BasicCredentials { username: "u".into(), password: "p".into() };
        let first = StoredHash::parse(&bcrypt::hash("p", 4).unwrap()).unwrap();
        assert!(auth.check(&creds, Some(&first)).await);
        assert!(auth.verified.contains_key(&auth.fingerprint(&creds, &first)), "a verified password is cached");
        assert!(auth.check(&creds, Some(&first)).await);
        assert_eq!(auth.slow_hashes.load(Ordering::Relaxed), 1, "the second check is served by the cache");
        let changed = StoredHash::parse(&bcrypt::hash("q", 4).unwrap()).unwrap();
        assert!(!auth.verified.contains_key(&auth.fingerprint(&creds, &changed)), "a new hash misses");
        assert!(!auth.check(&creds, Some(&changed)).await, "the old password no longer works");
        let wrong = BasicCredentials { username: "u".into(), password: "x".into() };
        assert!(!auth.check(&wrong, Some(&first)).await);
        assert!(!auth.verified.contains_key(&auth.fingerprint(&wrong, &first)), "a failure is not cached");
    }
}
