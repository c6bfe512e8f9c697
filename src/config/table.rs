//! The config table in DynamoDB: the item schema, and the store that reads and
//! writes it. This adapter knows DynamoDB, not HTTP.
//!
//! One table, string keys `pk` (partition) and `sk` (sort):
//!
//! | item | `pk` | `sk` | attributes |
//! |---|---|---|---|
//! | a user | `user#{username}` | `user` | `username` S, `password_hash` S |
//! | a rule | `acl` | `rule#{priority}` | `priority` N, `effect` S, `topics` L of S, optional `usernames`, `client_ids`, `source_ips`, `actions` (L of S), `qos` (L of N), `retain` BOOL, `auth` S |
//! | the limits | `acl` | `limits` | `max_payload_bytes` N, optional `messages_per_second`, `burst`, `user_messages_per_second`, `user_burst`, `max_waiting` N |
//! | `[cors]`, if set | `acl` | `cors` | `allowed_origins` L of S, `max_age_seconds` N |
//! | `[publish]`, if set | `acl` | `publish` | optional `message_id_property` S |
//! | `[idempotency]`, if set | `acl` | `idempotency` | optional `retention_seconds` N |
//! | an `Idempotency-Key` | `idem#{identity}#{key}` | `idem` | written by requests, never config (src/idempotency/dynamo.rs) |
//!
//! One user is one `GetItem`; the rules and limits are one `Query` of the
//! `acl` partition, read whole.
//!
//! The attributes are the config's own serde fields, mapped by serde_dynamo: the
//! item and the TOML entry cannot drift apart. A refused item is named by its key,
//! and the attribute at fault by its path (`qos[0]`). Reading, a string or number set
//! (`SS`, `NS`, from a hand edit in the console) is taken where a list is expected,
//! an absent optional attribute is `None`, and an attribute that is neither a key
//! nor a field is left alone.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::SdkConfig;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, PutRequest, WriteRequest};
use aws_sdk_dynamodb::Client;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{ConfigFile, Limits, RuleEntry, UserEntry};
use crate::cause::Cause;
use crate::store::StoreError;

/// One item: attribute name → value.
pub type Item = HashMap<String, AttributeValue>;

/// The bound of one table call made while a request waits: DynamoDB answers in
/// milliseconds, and the request has API Gateway's 29 s in all.
pub const REQUEST_PATH_TIMEOUT: Duration = Duration::from_secs(4);

/// The partition holding the rules and the limits.
const ACL_PARTITION: &str = "acl";

/// What a store tells as it reads or writes a whole table, item by item: the
/// command line shows it on stderr. Each method does nothing unless overridden.
pub trait Progress: Send + Sync + std::fmt::Debug {
    /// A step starts: what it does, and how many items it will touch when known.
    fn start(&self, _what: &str, _total: Option<u64>) {}
    /// `count` more items of the step are done.
    fn advance(&self, _count: u64) {}
    /// The step is over, every item done.
    fn finish(&self) {}
}

/// Tells no one: the request path's store.
#[derive(Debug)]
struct Silent;

impl Progress for Silent {}

/// Items in one `BatchWriteItem`, DynamoDB's most.
const BATCH: usize = 25;

/// Reads and writes the config table.
#[derive(Debug, Clone)]
pub struct TableStore {
    client: Client,
    table: String,
    /// Told how `items` and `write` advance.
    progress: Arc<dyn Progress>,
}

impl TableStore {
    /// A store for the request path: each call bounded to stay well inside a request's budget.
    pub fn new(sdk_config: &SdkConfig, table: &str) -> TableStore {
        TableStore::with_timeout(sdk_config, table, REQUEST_PATH_TIMEOUT)
    }

    /// A store whose calls (each page of a Query or Scan) may take up to `timeout`:
    /// the command line's, which moves whole tables.
    pub fn with_timeout(sdk_config: &SdkConfig, table: &str, timeout: Duration) -> TableStore {
        let config = aws_sdk_dynamodb::config::Builder::from(sdk_config)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(1))
                    .operation_attempt_timeout(timeout / 2)
                    .operation_timeout(timeout)
                    .build(),
            )
            .build();
        TableStore { client: Client::from_conf(config), table: table.to_owned(), progress: Arc::new(Silent) }
    }

    /// This store, telling `progress` how its whole-table reads and its writes advance.
    pub fn with_progress(self, progress: Arc<dyn Progress>) -> TableStore {
        TableStore { progress, ..self }
    }

    /// The DynamoDB client (the idempotency records share the table and its timeouts).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// One user, or `None` when the table has no such user.
    pub async fn user(&self, username: &str) -> Result<Option<UserEntry>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&format!("user#{username}")))
            .key("sk", s("user"))
            .send()
            .await
            .map_err(StoreError::of)?;
        output.item.map(|item| from_item(&user_key(username), item)).transpose()
    }

    /// The `acl` partition, all pages: every rule, the limits, `[cors]` and
    /// `[publish]`, as a config without users.
    pub async fn rules(&self) -> Result<ConfigFile, StoreError> {
        let mut items = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(ACL_PARTITION))
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            items.push(item.map_err(StoreError::of)?);
        }
        let mut config = ConfigFile::default();
        for item in items {
            let key = key_of(&item)?;
            match key.1.as_str() {
                "limits" => config.limits = from_item(&key, item)?,
                "cors" => config.cors = Some(from_item(&key, item)?),
                "publish" => config.publish = Some(from_item(&key, item)?),
                "idempotency" => config.idempotency = Some(from_item(&key, item)?),
                sk if sk.starts_with("rule#") => config.rules.push(from_item(&key, item)?),
                other => return Err(StoreError::new(format!("unexpected item sk={other:?} in the acl partition"))),
            }
        }
        Ok(config)
    }

    /// Every config item, keyed by (pk, sk): what `push` compares with and `pull` prints.
    pub async fn items(&self) -> Result<BTreeMap<(String, String), Item>, StoreError> {
        self.progress.start(&format!("reading table {}", self.table), None);
        let mut items = BTreeMap::new();
        let mut pages = self.client.scan().table_name(&self.table).into_paginator().items().send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(StoreError::of)?;
            let key = key_of(&item)?;
            // Idempotency keys share the table but are the requests' own, not config.
            if !key.0.starts_with(crate::idempotency::PARTITION_PREFIX) {
                items.insert(key, item);
            }
            self.progress.advance(1);
        }
        self.progress.finish();
        Ok(items)
    }

    /// Writes `puts`, then deletes `deletes`, 25 to a batch, retrying what
    /// DynamoDB leaves unprocessed.
    ///
    /// Every write is sent before the first delete, and each item is written
    /// whole. So a call that stops midway (a refused item, a lost connection,
    /// Ctrl-C) leaves each item either as it was or as asked, and if it stopped
    /// before the deletes, everything to remove still there: never a table missing
    /// both the old and the new of something. Calling again with what is still to
    /// do finishes the job; `config push` finds that by comparing the table with
    /// the file anew. While a call runs, requests see the same: a rule moved to
    /// another priority is briefly at both, never at neither.
    ///
    /// A failure names the item at fault (`user NAME`, `rule PRIORITY`, `limits`):
    /// DynamoDB refuses a batch whole, so a refused batch is sent again one item at
    /// a time, which finds the item it refuses (one over 400 KB, say).
    pub async fn write(&self, puts: Vec<Item>, deletes: Vec<(String, String)>) -> Result<(), StoreError> {
        let mut writes = Vec::with_capacity(puts.len());
        for item in puts {
            let key = key_of(&item)?;
            let put = PutRequest::builder().set_item(Some(item)).build().map_err(StoreError::of)?;
            writes.push((key, WriteRequest::builder().put_request(put).build()));
        }
        let mut removals = Vec::with_capacity(deletes.len());
        for (pk, sk) in deletes {
            let delete =
                DeleteRequest::builder().key("pk", s(&pk)).key("sk", s(&sk)).build().map_err(StoreError::of)?;
            removals.push(((pk, sk), WriteRequest::builder().delete_request(delete).build()));
        }
        self.send(&format!("writing to table {}", self.table), "write", writes).await?;
        self.send(&format!("deleting from table {}", self.table), "delete", removals).await
    }

    /// Sends `requests` in batches, telling the progress as `what`; a failure names
    /// the item that cannot be `verb`d.
    async fn send(
        &self,
        what: &str,
        verb: &str,
        requests: Vec<((String, String), WriteRequest)>,
    ) -> Result<(), StoreError> {
        if requests.is_empty() {
            return Ok(());
        }
        self.progress.start(what, Some(requests.len() as u64));
        for chunk in requests.chunks(BATCH) {
            if self.send_batch(chunk.iter().map(|(_, request)| request.clone()).collect()).await.is_err() {
                for (key, request) in chunk {
                    self.send_batch(vec![request.clone()]).await.map_err(|cause| {
                        StoreError::of(ItemRefused { verb: verb.to_owned(), item: describe(key), cause })
                    })?;
                }
            }
            self.progress.advance(chunk.len() as u64);
        }
        self.progress.finish();
        Ok(())
    }

    /// One `BatchWriteItem`, sent again while DynamoDB leaves some of it unprocessed.
    async fn send_batch(&self, mut pending: Vec<WriteRequest>) -> Result<(), Cause> {
        for attempt in 0..8u32 {
            let output =
                self.client.batch_write_item().request_items(&self.table, pending).send().await.map_err(cause)?;
            pending = output.unprocessed_items.and_then(|mut u| u.remove(&self.table)).unwrap_or_default();
            if pending.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
        }
        Err(format!("DynamoDB still left {} unprocessed after 8 tries", pending.len()).into())
    }
}

/// An item DynamoDB did not take, named as the config names it.
#[derive(Debug, thiserror::Error)]
#[error("cannot {verb} {item}")]
struct ItemRefused {
    verb: String,
    item: String,
    #[source]
    cause: Cause,
}

/// A failed call's cause, shortest first: the service's code and message when it answered.
fn cause<E, R>(e: SdkError<E, R>) -> Cause
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match (e.code(), e.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}").into(),
        _ => Cause::new(e),
    }
}

fn s(text: &str) -> AttributeValue {
    AttributeValue::S(text.to_owned())
}

/// The key of a user's item.
pub fn user_key(username: &str) -> (String, String) {
    (format!("user#{username}"), "user".to_owned())
}

/// The key of a rule's item.
pub fn rule_key(priority: i64) -> (String, String) {
    (ACL_PARTITION.to_owned(), format!("rule#{priority}"))
}

/// The key of the limits item.
pub fn limits_key() -> (String, String) {
    (ACL_PARTITION.to_owned(), "limits".to_owned())
}

/// The key of the `[cors]` item.
pub fn cors_key() -> (String, String) {
    (ACL_PARTITION.to_owned(), "cors".to_owned())
}

/// The key of the `[publish]` item.
pub fn publish_key() -> (String, String) {
    (ACL_PARTITION.to_owned(), "publish".to_owned())
}

/// The key of the `[idempotency]` item.
pub fn idempotency_key() -> (String, String) {
    (ACL_PARTITION.to_owned(), "idempotency".to_owned())
}

/// What an item is, for people: `user NAME`, `rule PRIORITY` or `limits`.
pub fn describe((pk, sk): &(String, String)) -> String {
    match (pk.strip_prefix("user#"), sk.strip_prefix("rule#")) {
        (Some(user), _) => format!("user {user}"),
        (_, Some(priority)) => format!("rule {priority}"),
        _ => sk.clone(),
    }
}

fn to_item<T: Serialize>((pk, sk): (String, String), entry: &T) -> Item {
    let mut item: Item = serde_dynamo::aws_sdk_dynamodb_1::to_item(entry)
        .expect("an entry is a struct of named fields, which serde_dynamo always maps");
    item.insert("pk".to_owned(), AttributeValue::S(pk));
    item.insert("sk".to_owned(), AttributeValue::S(sk));
    item
}

fn from_item<T: DeserializeOwned>((pk, sk): &(String, String), item: Item) -> Result<T, StoreError> {
    serde_path_to_error::deserialize(Fields(item.into()))
        .map_err(|e| StoreError::new(format!("item pk={pk:?} sk={sk:?}: {e}")))
}

/// An item, handed to the struct that reads it with only the attributes that are its
/// fields: the entries refuse unknown fields, as a file's must, while an item also
/// holds its key and may hold a note added in the console.
struct Fields(serde_dynamo::Item);

impl<'de> serde::Deserializer<'de> for Fields {
    type Error = serde_dynamo::Error;

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let mut item: HashMap<_, _> = self.0.into();
        item.retain(|attribute: &String, _| fields.contains(&attribute.as_str()));
        serde_dynamo::Deserializer::from_attribute_value(serde_dynamo::AttributeValue::M(item))
            .deserialize_struct(name, fields, visitor)
    }

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        serde_dynamo::Deserializer::from_attribute_value(serde_dynamo::AttributeValue::M(self.0.into()))
            .deserialize_any(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

fn key_of(item: &Item) -> Result<(String, String), StoreError> {
    match (item.get("pk"), item.get("sk")) {
        (Some(AttributeValue::S(pk)), Some(AttributeValue::S(sk))) => Ok((pk.clone(), sk.clone())),
        (pk, sk) => Err(StoreError::new(format!("an item whose pk and sk are not both strings: pk={pk:?} sk={sk:?}"))),
    }
}

/// A user as an item.
pub fn user_item(user: &UserEntry) -> Item {
    to_item(user_key(&user.username), user)
}

/// A rule as an item.
pub fn rule_item(rule: &RuleEntry) -> Item {
    to_item(rule_key(rule.priority), rule)
}

/// The limits as an item.
pub fn limits_item(limits: &Limits) -> Item {
    to_item(limits_key(), limits)
}

/// A whole config as items by key: the table `push` makes.
pub fn config_items(config: &ConfigFile) -> BTreeMap<(String, String), Item> {
    let mut items = BTreeMap::new();
    for user in &config.users {
        items.insert(user_key(&user.username), user_item(user));
    }
    for rule in &config.rules {
        items.insert(rule_key(rule.priority), rule_item(rule));
    }
    items.insert(limits_key(), limits_item(&config.limits));
    if let Some(cors) = &config.cors {
        items.insert(cors_key(), to_item(cors_key(), cors));
    }
    if let Some(publish) = &config.publish {
        items.insert(publish_key(), to_item(publish_key(), publish));
    }
    if let Some(idempotency) = &config.idempotency {
        items.insert(idempotency_key(), to_item(idempotency_key(), idempotency));
    }
    items
}

/// Items back into a config: what `pull` prints. Users by name, rules by priority.
pub fn config_from_items(items: &BTreeMap<(String, String), Item>) -> Result<ConfigFile, StoreError> {
    let mut config = ConfigFile::default();
    for (key, item) in items {
        match (key.0.as_str(), key.1.as_str()) {
            (ACL_PARTITION, "limits") => config.limits = from_item(key, item.clone())?,
            (ACL_PARTITION, "cors") => config.cors = Some(from_item(key, item.clone())?),
            (ACL_PARTITION, "publish") => config.publish = Some(from_item(key, item.clone())?),
            (ACL_PARTITION, "idempotency") => config.idempotency = Some(from_item(key, item.clone())?),
            (ACL_PARTITION, sk) if sk.starts_with("rule#") => config.rules.push(from_item(key, item.clone())?),
            (pk, "user") if pk.starts_with("user#") => config.users.push(from_item(key, item.clone())?),
            (pk, sk) => {
                return Err(StoreError::new(format!("the table holds an item that is not config: pk={pk:?} sk={sk:?}")))
            }
        }
    }
    config.users.sort_by(|a, b| a.username.cmp(&b.username));
    config.rules.sort_by_key(|r| r.priority);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ActionEntry, AuthEntry, EffectEntry};

    fn n(number: &str) -> AttributeValue {
        AttributeValue::N(number.into())
    }

    fn l(values: &[&str]) -> AttributeValue {
        AttributeValue::L(values.iter().map(|v| s(v)).collect())
    }

    fn item(attributes: &[(&str, AttributeValue)]) -> Item {
        attributes.iter().map(|(name, value)| (name.to_string(), value.clone())).collect()
    }

    /// An item of the `acl` partition: its sort key, then `attributes`.
    fn acl_item(sort_key: &str, attributes: &[(&str, AttributeValue)]) -> Item {
        let mut item = item(attributes);
        item.extend([("pk".to_owned(), s("acl")), ("sk".to_owned(), s(sort_key))]);
        item
    }

    fn rule(priority: i64) -> RuleEntry {
        toml::from_str(&format!("priority = {priority}\neffect = \"allow\"\ntopics = [\"a\"]")).unwrap()
    }

    #[test]
    fn items_round_trip_to_the_same_config() {
        let mut config = super::super::parse_toml(include_str!("../../config/example.toml")).unwrap();
        config.rules[0].qos = Some(vec![0, 1]);
        config.rules[0].retain = Some(false);
        config.rules[0].client_ids = Some(vec!["curl-*".into()]);
        config.rules[0].source_ips = Some(vec!["10.0.0.0/8".into()]);
        config.limits.messages_per_second = Some(1000.5);
        config.limits.user_burst = Some(200);
        assert_eq!(config_from_items(&config_items(&config)).unwrap(), config);
    }

    #[test]
    fn items_have_the_documented_attributes_and_types() {
        let user = UserEntry { username: "user0".into(), password_hash: "$x".into() };
        assert_eq!(
            user_item(&user),
            item(&[("pk", s("user#user0")), ("sk", s("user")), ("username", s("user0")), ("password_hash", s("$x"))])
        );
        let full = RuleEntry {
            priority: -5,
            effect: EffectEntry::Deny,
            topics: vec!["home".into(), "home/#".into()],
            usernames: Some(vec!["user0".into()]),
            client_ids: Some(vec!["curl-*".into()]),
            source_ips: Some(vec!["10.0.0.0/8".into()]),
            qos: Some(vec![0, 1]),
            retain: Some(true),
            auth: Some(AuthEntry::Certificate),
            actions: Some(vec![ActionEntry::Publish, ActionEntry::Subscribe]),
        };
        assert_eq!(
            rule_item(&full),
            acl_item(
                "rule#-5",
                &[
                    ("priority", n("-5")),
                    ("effect", s("deny")),
                    ("topics", l(&["home", "home/#"])),
                    ("usernames", l(&["user0"])),
                    ("client_ids", l(&["curl-*"])),
                    ("source_ips", l(&["10.0.0.0/8"])),
                    ("qos", AttributeValue::L(vec![n("0"), n("1")])),
                    ("retain", AttributeValue::Bool(true)),
                    ("auth", s("certificate")),
                    ("actions", l(&["publish", "subscribe"])),
                ]
            )
        );
        assert_eq!(
            rule_item(&rule(7)),
            acl_item("rule#7", &[("priority", n("7")), ("effect", s("allow")), ("topics", l(&["a"]))]),
            "an absent optional field is no attribute at all"
        );
        let limits = Limits { messages_per_second: Some(1000.5), user_burst: Some(200), ..Limits::default() };
        assert_eq!(
            limits_item(&limits),
            acl_item(
                "limits",
                &[("max_payload_bytes", n("131072")), ("messages_per_second", n("1000.5")), ("user_burst", n("200")),]
            )
        );
    }

    #[test]
    fn hand_edited_items_with_sets_missing_options_and_extra_attributes_are_read() {
        let edited = BTreeMap::from([
            (
                rule_key(20),
                acl_item(
                    "rule#20",
                    &[
                        ("priority", n("20")),
                        ("effect", s("allow")),
                        ("topics", AttributeValue::Ss(vec!["home".into(), "home/#".into()])),
                        ("usernames", AttributeValue::Ss(vec!["user0".into()])),
                        ("qos", AttributeValue::Ns(vec!["1".into(), "0".into()])),
                        ("note", s("added in the console")),
                    ],
                ),
            ),
            (limits_key(), item(&[("pk", s("acl")), ("sk", s("limits")), ("burst", n("2000"))])),
        ]);
        let config = config_from_items(&edited).unwrap();
        let expected = RuleEntry {
            topics: vec!["home".into(), "home/#".into()],
            usernames: Some(vec!["user0".into()]),
            qos: Some(vec![1, 0]),
            ..rule(20)
        };
        assert_eq!(config.rules, [expected]);
        assert_eq!(config.limits, Limits { burst: Some(2000), ..Limits::default() }, "max_payload_bytes defaults");
    }

    #[test]
    fn a_hand_edited_item_of_the_wrong_type_is_named() {
        for (attribute, value, expected) in [
            ("retain", s("yes"), "retain: Expected bool"),
            ("topics", s("home"), "topics: Expected seq"),
            ("qos", AttributeValue::L(vec![n("300")]), "qos[0]: Failed to parse '300'"),
            ("priority", n("5.5"), "priority: Failed to parse '5.5'"),
            ("effect", s("permit"), "effect: unknown variant `permit`"),
        ] {
            let mut rule = rule_item(&rule(5));
            rule.insert(attribute.into(), value);
            let e = config_from_items(&BTreeMap::from([(rule_key(5), rule)])).unwrap_err().to_string();
            assert!(e.contains("sk=\"rule#5\"") && e.contains(expected), "{attribute}: {e}");
        }
        let mut rule = rule_item(&rule(5));
        rule.remove("topics");
        let e = config_from_items(&BTreeMap::from([(rule_key(5), rule)])).unwrap_err().to_string();
        assert!(e.contains("sk=\"rule#5\"") && e.contains("missing field `topics`"), "{e}");
    }

    #[test]
    fn an_item_that_is_not_config_is_refused() {
        let stray = item(&[("pk", s("order#1")), ("sk", s("order"))]);
        let e = config_from_items(&BTreeMap::from([(("order#1".into(), "order".into()), stray)])).unwrap_err();
        assert!(e.to_string().contains("not config: pk=\"order#1\""), "{e}");
    }
}
