//! The config (docs/configuration.md): users, rules and limits. One model, two homes: a
//! TOML file and a DynamoDB table ([`table`]). Either is validated into the
//! same [`Policy`]; a config that breaks a rule is refused whole, with a
//! message that names the entry. [`source`] serves it to requests, with the
//! table's caches; [`manage`] is the command line's check, push, pull and edits.

pub mod manage;
pub mod open;
pub mod source;
pub mod table;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::acl::{Acl, Actions, AuthMethod, Cidr, Effect, Glob, Rule, TopicFilter};
use crate::auth::{StoredHash, Users};
use crate::contract::batch::{DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_BATCH_MESSAGES};
use crate::contract::cors::Cors;
use crate::contract::trace::{TRACEPARENT, TRACESTATE};
use crate::contract::values::forbidden_in_mqtt_text;

/// The default payload limit: AWS IoT Core's 128 KiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 131_072;

/// The password hash of the demo user (`user0` / `secret0`) in
/// `config/example.toml` and `serve`'s demo config. Its password is printed in
/// the README and in Tencent Cloud MQTT's HTTP publish documentation, so `config push` keeps it off a table
/// unless told otherwise.
pub const DEMO_PASSWORD_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$eRi/JmbC+0iM7lbk0iybwA$cok3Q+hd+USrvOXevP6umE7RRRhr6FtVu5mWX6zfDNk";

/// The config as written in TOML.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Who may authenticate with HTTP Basic.
    #[serde(default)]
    pub users: Vec<UserEntry>,
    /// The ACL.
    #[serde(default)]
    pub rules: Vec<RuleEntry>,
    /// Quotas and sizes.
    #[serde(default)]
    pub limits: Limits,
    /// Which web pages may call the API from a browser; absent, none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsEntry>,
    /// What every published message carries besides what its request asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishEntry>,
    /// How long an `Idempotency-Key` is remembered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<IdempotencyEntry>,
}

/// `[idempotency]`: how long a request's `Idempotency-Key` is remembered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyEntry {
    /// Seconds after its record's last write that a key still answers a retry
    /// with the first answer; [`DEFAULT_IDEMPOTENCY_RETENTION_SECONDS`] if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_seconds: Option<u64>,
}

/// A day: how long an `Idempotency-Key` is remembered by default.
pub const DEFAULT_IDEMPOTENCY_RETENTION_SECONDS: u64 = 86_400;
/// The shortest retention: a key must outlive its request's own time in flight.
const MIN_IDEMPOTENCY_RETENTION_SECONDS: u64 = 60;
/// The longest retention: thirty days.
const MAX_IDEMPOTENCY_RETENTION_SECONDS: u64 = 2_592_000;

/// `[publish]`: what every published message carries besides what its request asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublishEntry {
    /// The name of a user property that carries the request's message id (the
    /// `X-Message-Id` of its answer), so a subscriber can drop a duplicate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id_property: Option<String>,
}

/// Longest `message_id_property` name.
const MAX_PROPERTY_NAME_BYTES: usize = 128;

/// `[cors]`: the origins whose pages may publish from a browser.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CorsEntry {
    /// Exact origins (`https://app.example.com`, `http://127.0.0.1:9090`), or `"*"` for any.
    pub allowed_origins: Vec<String>,
    /// How long a browser may cache a preflight's answer.
    #[serde(default = "default_cors_max_age")]
    pub max_age_seconds: u32,
}

/// Seconds a browser may cache a preflight unless `[cors] max_age_seconds` says otherwise.
pub const DEFAULT_CORS_MAX_AGE: u32 = 600;

fn default_cors_max_age() -> u32 {
    DEFAULT_CORS_MAX_AGE
}

/// A `[[users]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// The Basic user name.
    pub username: String,
    /// A PHC (or bcrypt) hash; never the password itself.
    pub password_hash: String,
}

/// A `[[rules]]` entry, before validation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleEntry {
    /// Unique; smaller is checked first.
    pub priority: i64,
    /// `"allow"` or `"deny"`.
    pub effect: EffectEntry,
    /// MQTT filters, with `${username}` and `${client_id}`.
    pub topics: Vec<String>,
    /// Verified user names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usernames: Option<Vec<String>>,
    /// client_id globs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ids: Option<Vec<String>>,
    /// CIDR blocks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ips: Option<Vec<String>>,
    /// QoS values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<Vec<u8>>,
    /// Only retained (true) or only non-retained (false) publishes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain: Option<bool>,
    /// `"basic"` or `"certificate"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthEntry>,
    /// `"publish"` and/or `"subscribe"` (waiting for replies there); `["publish"]` if absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<ActionEntry>>,
}

/// An `actions` entry as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionEntry {
    /// `"publish"`.
    Publish,
    /// `"subscribe"`: receive replies on the rule's topics.
    Subscribe,
}

/// `effect` as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EffectEntry {
    /// `"allow"`.
    Allow,
    /// `"deny"`.
    Deny,
}

/// `auth` as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthEntry {
    /// `"basic"`.
    Basic,
    /// `"certificate"`.
    Certificate,
}

/// `[limits]`: every field optional; quotas are off unless set (the budget of
/// password checks has a default).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest payload accepted; the backend's own limit applies too.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
    /// Quota of the whole instance, messages per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_per_second: Option<f64>,
    /// Burst of the instance quota.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Quota of each username or certificate CN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_messages_per_second: Option<f64>,
    /// Burst of each user's quota.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_burst: Option<u32>,
    /// Slow password hashes one source address may cost, a second: beyond, its
    /// logins that need one are 429 before the hash (a verified password is
    /// cached, so in practice these are its failed logins).
    #[serde(default = "default_password_checks_per_second", skip_serializing_if = "is_default_password_checks")]
    pub password_checks_per_second: Option<f64>,
    /// Burst of each source address's password checks.
    #[serde(default = "default_password_check_burst", skip_serializing_if = "is_default_password_check_burst")]
    pub password_check_burst: Option<u32>,
    /// Requests that may wait for a reply at once, per process; beyond, 503.
    #[serde(default = "default_max_waiting", skip_serializing_if = "is_default_max_waiting")]
    pub max_waiting: usize,
    /// Messages one `POST /messages` may hold.
    #[serde(default = "default_max_batch_messages", skip_serializing_if = "is_default_max_batch_messages")]
    pub max_batch_messages: usize,
    /// Bytes of one `POST /messages`'s JSON body.
    #[serde(default = "default_max_batch_bytes", skip_serializing_if = "is_default_max_batch_bytes")]
    pub max_batch_bytes: usize,
}

fn default_max_batch_messages() -> usize {
    DEFAULT_MAX_BATCH_MESSAGES
}

fn is_default_max_batch_messages(v: &usize) -> bool {
    *v == DEFAULT_MAX_BATCH_MESSAGES
}

fn default_max_batch_bytes() -> usize {
    DEFAULT_MAX_BATCH_BYTES
}

fn is_default_max_batch_bytes(v: &usize) -> bool {
    *v == DEFAULT_MAX_BATCH_BYTES
}

/// Requests waiting for replies at once per process, by default.
pub const DEFAULT_MAX_WAITING: usize = 1000;

fn default_max_waiting() -> usize {
    DEFAULT_MAX_WAITING
}

fn is_default_max_waiting(v: &usize) -> bool {
    *v == DEFAULT_MAX_WAITING
}

/// Password checks a source address may cost by default: a second, and at once.
pub const DEFAULT_PASSWORD_CHECKS_PER_SECOND: f64 = 5.0;
/// See [`DEFAULT_PASSWORD_CHECKS_PER_SECOND`].
pub const DEFAULT_PASSWORD_CHECK_BURST: u32 = 20;

fn default_password_checks_per_second() -> Option<f64> {
    Some(DEFAULT_PASSWORD_CHECKS_PER_SECOND)
}

fn default_password_check_burst() -> Option<u32> {
    Some(DEFAULT_PASSWORD_CHECK_BURST)
}

fn is_default_password_checks(v: &Option<f64>) -> bool {
    *v == default_password_checks_per_second()
}

fn is_default_password_check_burst(v: &Option<u32>) -> bool {
    *v == default_password_check_burst()
}

fn default_max_payload() -> usize {
    DEFAULT_MAX_PAYLOAD_BYTES
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            messages_per_second: None,
            burst: None,
            user_messages_per_second: None,
            user_burst: None,
            password_checks_per_second: default_password_checks_per_second(),
            password_check_burst: default_password_check_burst(),
            max_waiting: DEFAULT_MAX_WAITING,
            max_batch_messages: DEFAULT_MAX_BATCH_MESSAGES,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
        }
    }
}

/// A config that was refused, with the entry at fault named in the message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML, or not the config's shape.
    #[error("{0}")]
    Parse(String),
    /// Parsed, but breaks a rule of the model.
    #[error("{0}")]
    Invalid(String),
}

/// The rules and limits of a validated config: what every request reads.
#[derive(Debug)]
pub struct RuleSet {
    /// The compiled ACL.
    pub acl: Acl,
    /// Quotas and sizes.
    pub limits: Limits,
    /// The browser origins allowed to call the API; `None` without `[cors]`.
    pub cors: Option<Cors>,
    /// The user property that carries each message's id, if any (`[publish]`).
    pub message_id_property: Option<String>,
    /// How long an `Idempotency-Key` is remembered (`[idempotency]`).
    pub idempotency_retention: std::time::Duration,
}

/// A user property name of `[publish]`: 1 to 128 bytes, no control character.
fn check_property_name(name: String) -> Result<String, ConfigError> {
    if name.is_empty() || name.len() > MAX_PROPERTY_NAME_BYTES || forbidden_in_mqtt_text(&name).is_some() {
        return Err(ConfigError::Invalid(format!(
            "[publish]: message_id_property {name:?} must be 1 to {MAX_PROPERTY_NAME_BYTES} bytes without control characters or noncharacters"
        )));
    }
    if [TRACEPARENT, TRACESTATE].iter().any(|t| name.eq_ignore_ascii_case(t)) {
        return Err(ConfigError::Invalid(format!(
            "[publish]: message_id_property {name:?} is the user property that carries trace context; choose another name"
        )));
    }
    Ok(name)
}

impl RuleSet {
    /// Validates rule entries and limits.
    pub fn new(entries: Vec<RuleEntry>, limits: Limits) -> Result<RuleSet, ConfigError> {
        let mut priorities = HashSet::new();
        let mut rules = Vec::with_capacity(entries.len());
        for entry in entries {
            if !priorities.insert(entry.priority) {
                return Err(ConfigError::Invalid(format!(
                    "rule with priority {}: the priority is used by another rule (priorities must be unique)",
                    entry.priority
                )));
            }
            rules.push(validate_rule(entry)?);
        }
        check_limits(&limits)?;
        Ok(RuleSet {
            acl: Acl::new(rules),
            limits,
            cors: None,
            message_id_property: None,
            idempotency_retention: std::time::Duration::from_secs(DEFAULT_IDEMPOTENCY_RETENTION_SECONDS),
        })
    }

    /// Validates everything of a config that requests read but the users: the
    /// rules, limits, `[cors]`, `[publish]` and `[idempotency]`.
    pub fn from_config(file: ConfigFile) -> Result<RuleSet, ConfigError> {
        let mut set = RuleSet::new(file.rules, file.limits)?;
        set.cors = file
            .cors
            .as_ref()
            .map(|c| Cors::new(c.allowed_origins.iter().map(String::as_str), c.max_age_seconds))
            .transpose()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        set.message_id_property =
            file.publish.and_then(|p| p.message_id_property).map(check_property_name).transpose()?;
        if let Some(seconds) = file.idempotency.and_then(|i| i.retention_seconds) {
            if !(MIN_IDEMPOTENCY_RETENTION_SECONDS..=MAX_IDEMPOTENCY_RETENTION_SECONDS).contains(&seconds) {
                return Err(ConfigError::Invalid(format!(
                    "[idempotency]: retention_seconds = {seconds} must be {MIN_IDEMPOTENCY_RETENTION_SECONDS} to {MAX_IDEMPOTENCY_RETENTION_SECONDS} (thirty days)"
                )));
            }
            set.idempotency_retention = std::time::Duration::from_secs(seconds);
        }
        Ok(set)
    }
}

/// Validates one user entry.
pub fn validate_user(user: &UserEntry) -> Result<StoredHash, ConfigError> {
    if user.username.is_empty() {
        return Err(ConfigError::Invalid("a user has an empty username".into()));
    }
    StoredHash::parse(&user.password_hash)
        .map_err(|e| ConfigError::Invalid(format!("user {:?}: password_hash {e}", user.username)))
}

/// A validated config, ready to answer requests.
#[derive(Debug)]
pub struct Policy {
    /// Users by name.
    pub users: Users,
    /// Rules and limits.
    pub rules: Arc<RuleSet>,
}

impl Policy {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Policy, ConfigError> {
        Policy::from_file(read_file(path)?)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Policy, ConfigError> {
        Policy::from_file(parse_toml(text)?)
    }

    /// Validates a parsed config.
    pub fn from_file(file: ConfigFile) -> Result<Policy, ConfigError> {
        let mut users = Users::with_capacity(file.users.len());
        for user in &file.users {
            let hash = validate_user(user)?;
            if users.insert(user.username.clone(), hash).is_some() {
                return Err(ConfigError::Invalid(format!("user {:?} is defined twice", user.username)));
            }
        }
        Ok(Policy { users, rules: Arc::new(RuleSet::from_config(file)?) })
    }
}

/// Reads a TOML config file without validating it.
pub fn read_file(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
    parse_toml(&text)
}

/// Parses TOML text into the config's shape without validating it.
pub fn parse_toml(text: &str) -> Result<ConfigFile, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
}

fn validate_rule(entry: RuleEntry) -> Result<Rule, ConfigError> {
    let at = |message: String| ConfigError::Invalid(format!("rule with priority {}: {message}", entry.priority));
    if entry.topics.is_empty() {
        return Err(at("topics is empty".into()));
    }
    let topics = entry
        .topics
        .iter()
        .map(|t| TopicFilter::parse(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| at(e.to_string()))?;
    let source_ips = entry
        .source_ips
        .as_ref()
        .map(|ips| ips.iter().map(|s| s.parse::<Cidr>()).collect::<Result<Vec<_>, _>>())
        .transpose()
        .map_err(|e| at(e.to_string()))?;
    if let Some(bad) = entry.qos.iter().flatten().find(|&&q| q > 2) {
        return Err(at(format!("qos {bad} is not 0, 1 or 2")));
    }
    let actions = match &entry.actions {
        None => Actions::PUBLISH,
        Some(list) if list.is_empty() => {
            return Err(at("actions is empty: name \"publish\", \"subscribe\" or both".into()))
        }
        Some(list) => {
            Actions { publish: list.contains(&ActionEntry::Publish), subscribe: list.contains(&ActionEntry::Subscribe) }
        }
    };
    let usernames = entry.usernames.map(|mut names| {
        names.sort();
        names.dedup();
        names
    });
    Ok(Rule {
        priority: entry.priority,
        effect: match entry.effect {
            EffectEntry::Allow => Effect::Allow,
            EffectEntry::Deny => Effect::Deny,
        },
        topics,
        usernames,
        client_ids: entry.client_ids.map(|globs| globs.iter().map(|g| Glob::new(g)).collect()),
        source_ips,
        qos: entry.qos,
        retain: entry.retain,
        auth: entry.auth.map(|a| match a {
            AuthEntry::Basic => AuthMethod::Basic,
            AuthEntry::Certificate => AuthMethod::Certificate,
        }),
        actions,
    })
}

fn check_limits(limits: &Limits) -> Result<(), ConfigError> {
    let invalid = |m: &str| Err(ConfigError::Invalid(format!("[limits]: {m}")));
    if limits.max_payload_bytes == 0 {
        return invalid("max_payload_bytes must be positive");
    }
    if limits.max_batch_messages == 0 || limits.max_batch_bytes == 0 {
        return invalid("max_batch_messages and max_batch_bytes must be positive");
    }
    for (name, rate) in [
        ("messages_per_second", limits.messages_per_second),
        ("user_messages_per_second", limits.user_messages_per_second),
        ("password_checks_per_second", limits.password_checks_per_second),
    ] {
        if rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return invalid(&format!("{name} must be a positive number"));
        }
    }
    for (name, burst) in [
        ("burst", limits.burst),
        ("user_burst", limits.user_burst),
        ("password_check_burst", limits.password_check_burst),
    ] {
        if burst == Some(0) {
            return invalid(&format!("{name} must be positive"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$bm90LWEtcmVhbC11c2Vy$0FDEr8HgkdCZPE7sWx71xLaH7o6bvm0b3fA7QCsdzCc";

    fn refused(toml: &str) -> String {
        Policy::from_toml(toml).unwrap_err().to_string()
    }

    #[test]
    fn the_example_config_loads() {
        let policy = Policy::from_toml(include_str!("../../config/example.toml")).unwrap();
        assert!(policy.users.contains_key("user0"));
        assert!(!policy.rules.acl.rules().is_empty());
    }

    #[test]
    fn a_plain_text_password_is_refused_naming_the_user() {
        let e = refused("[[users]]\nusername = \"user0\"\npassword_hash = \"secret0\"\n");
        assert!(e.contains("user \"user0\"") && e.contains("plain-text"), "{e}");
    }

    #[test]
    fn broken_rules_are_refused_naming_the_rule() {
        let dup = "[[rules]]\npriority = 1\neffect = \"allow\"\ntopics = [\"a\"]\n\
                   [[rules]]\npriority = 1\neffect = \"deny\"\ntopics = [\"b\"]\n";
        assert!(refused(dup).contains("priority 1") && refused(dup).contains("unique"));
        let hash = "[[rules]]\npriority = 5\neffect = \"allow\"\ntopics = [\"a/#/b\"]\n";
        assert!(refused(hash).contains("priority 5") && refused(hash).contains("'#' must be the last level"));
        let cidr = "[[rules]]\npriority = 6\neffect = \"allow\"\ntopics = [\"a\"]\nsource_ips = [\"10.0.0.0/40\"]\n";
        assert!(refused(cidr).contains("priority 6") && refused(cidr).contains("10.0.0.0/40"));
        let qos = "[[rules]]\npriority = 7\neffect = \"allow\"\ntopics = [\"a\"]\nqos = [3]\n";
        assert!(refused(qos).contains("qos 3"));
        let empty = "[[rules]]\npriority = 8\neffect = \"allow\"\ntopics = []\n";
        assert!(refused(empty).contains("topics is empty"));
    }

    #[test]
    fn typos_and_bad_values_are_refused() {
        assert!(refused("[[rules]]\npriority = 1\neffect = \"permit\"\ntopics = [\"a\"]\n").contains("permit"));
        assert!(refused("[[rules]]\npriority = 1\neffect = \"allow\"\ntopic = [\"a\"]\n").contains("topic"));
        assert!(refused("[limits]\nmessages_per_second = 0\n").contains("messages_per_second"));
        assert!(refused("[limits]\npassword_checks_per_second = -1\n").contains("password_checks_per_second"));
        assert!(refused("[limits]\npassword_checks_per_second = nan\n").contains("password_checks_per_second"));
        assert!(refused("[limits]\npassword_check_burst = 0\n").contains("password_check_burst"));
        assert!(refused(&format!(
            "[[users]]\nusername = \"a\"\npassword_hash = \"{HASH}\"\n\
                                  [[users]]\nusername = \"a\"\npassword_hash = \"{HASH}\"\n"
        ))
        .contains("defined twice"));
    }

    #[test]
    fn cors_origins_are_exact_origins_or_a_star() {
        let p =
            Policy::from_toml("[cors]\nallowed_origins = [\"https://app.example.com\", \"http://127.0.0.1:9090\"]\n")
                .unwrap();
        let cors = p.rules.cors.as_ref().unwrap();
        assert!(cors.allows("https://app.example.com") && cors.allows("http://127.0.0.1:9090"));
        assert!(!cors.allows("https://app.example.com:443") && !cors.allows("http://app.example.com"));
        assert_eq!(cors.max_age_seconds, DEFAULT_CORS_MAX_AGE);
        let any = Policy::from_toml("[cors]\nallowed_origins = [\"*\"]\nmax_age_seconds = 5\n").unwrap();
        assert!(any.rules.cors.as_ref().unwrap().allows("http://anything.example"));
        for bad in [
            "https://app.example.com/",
            "https://app.example.com/path",
            "HTTPS://APP.example.com",
            "app.example.com",
            "ftp://x",
            "https://u@x",
            "https://app.example.com:443",
            "http://127.0.0.1:80",
        ] {
            let message = refused(&format!("[cors]\nallowed_origins = [\"{bad}\"]\n"));
            assert!(message.contains("[cors]") && message.contains(bad), "{bad}: {message}");
        }
        assert!(Policy::from_toml("").unwrap().rules.cors.is_none(), "absent, no page may call");
    }

    #[test]
    fn idempotency_retention_defaults_to_a_day_and_is_bounded() {
        let day = std::time::Duration::from_secs(86_400);
        assert_eq!(Policy::from_toml("").unwrap().rules.idempotency_retention, day);
        assert_eq!(Policy::from_toml("[idempotency]\n").unwrap().rules.idempotency_retention, day);
        let p = Policy::from_toml("[idempotency]\nretention_seconds = 3600\n").unwrap();
        assert_eq!(p.rules.idempotency_retention, std::time::Duration::from_secs(3600));
        for bad in [0, 59, 2_592_001] {
            let message = refused(&format!("[idempotency]\nretention_seconds = {bad}\n"));
            assert!(message.contains("retention_seconds"), "{bad}: {message}");
        }
    }

    #[test]
    fn publish_message_id_property_is_a_checked_name() {
        let p = Policy::from_toml("[publish]\nmessage_id_property = \"message-id\"\n").unwrap();
        assert_eq!(p.rules.message_id_property.as_deref(), Some("message-id"));
        assert_eq!(Policy::from_toml("[publish]\n").unwrap().rules.message_id_property, None);
        for bad in ["", "a\\u0000b", "a\\tb", &"x".repeat(129), "traceparent", "TraceState"] {
            let message = refused(&format!("[publish]\nmessage_id_property = \"{bad}\"\n"));
            assert!(message.contains("message_id_property"), "{bad}: {message}");
        }
        assert!(refused("[publish]\nmessage_id = \"x\"\n").contains("message_id"), "a typo is refused");
    }

    #[test]
    fn a_config_survives_toml_serialization_unchanged() {
        let file = parse_toml(include_str!("../../config/example.toml")).unwrap();
        let text = toml::to_string(&file).unwrap();
        assert_eq!(parse_toml(&text).unwrap(), file);
    }

    #[test]
    fn limits_default_to_128_kib_and_no_quota() {
        let p = Policy::from_toml("").unwrap();
        assert_eq!(p.rules.limits, Limits::default());
        assert_eq!(p.rules.limits.max_payload_bytes, 131_072);
    }
}
