//! The config table in DynamoDB: the item schema, and the store that reads and
//! writes it. This adapter knows DynamoDB, not HTTP.
//!
//! One table, string keys `pk` (partition) and `sk` (sort):
//!
//! | item | `pk` | `sk` | attributes |
//! |---|---|---|---|
//! | a user | `user#{username}` | `user` | `username` S, `password_hash` S |
//! | a rule | `acl` | `rule#{priority}` | `priority` N, `effect` S, `topics` L of S, optional `usernames`, `client_ids`, `source_ips` (L of S), `qos` (L of N), `retain` BOOL, `auth` S |
//! | the limits | `acl` | `limits` | `max_payload_bytes` N, optional `messages_per_second`, `burst`, `user_messages_per_second`, `user_burst` N |
//!
//! One user is one `GetItem`; the rules and limits are one `Query` of the
//! `acl` partition, read whole.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::SdkConfig;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, PutRequest, WriteRequest};
use aws_sdk_dynamodb::Client;

use super::{AuthEntry, ConfigFile, EffectEntry, Limits, RuleEntry, UserEntry};

/// One item: attribute name → value.
pub type Item = HashMap<String, AttributeValue>;

/// The bound of one table call made while a request waits: DynamoDB answers in
/// milliseconds, and the request has API Gateway's 29 s in all.
pub const REQUEST_PATH_TIMEOUT: Duration = Duration::from_secs(4);

/// The partition holding the rules and the limits.
const ACL_PARTITION: &str = "acl";

/// The config store could not answer; the request gets 503, never 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the config store failed: {0}")]
pub struct StoreError(pub String);

/// Reads and writes the config table.
#[derive(Debug, Clone)]
pub struct TableStore {
    client: Client,
    table: String,
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
        TableStore { client: Client::from_conf(config), table: table.to_owned() }
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
            .map_err(|e| StoreError(DisplayErrorContext(&e).to_string()))?;
        output.item.map(|item| user_from_item(&item)).transpose()
    }

    /// Every rule and the limits: the `acl` partition, all pages.
    pub async fn rules(&self) -> Result<(Vec<RuleEntry>, Limits), StoreError> {
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
            items.push(item.map_err(|e| StoreError(DisplayErrorContext(&e).to_string()))?);
        }
        let mut rules = Vec::new();
        let mut limits = Limits::default();
        for item in &items {
            match str_attr(item, "sk")?.as_str() {
                "limits" => limits = limits_from_item(item)?,
                sk if sk.starts_with("rule#") => rules.push(rule_from_item(item)?),
                other => return Err(StoreError(format!("unexpected item sk={other:?} in the acl partition"))),
            }
        }
        Ok((rules, limits))
    }

    /// Every config item, keyed by (pk, sk): what `push` compares with and `pull` prints.
    pub async fn items(&self) -> Result<BTreeMap<(String, String), Item>, StoreError> {
        let mut items = BTreeMap::new();
        let mut pages = self.client.scan().table_name(&self.table).into_paginator().items().send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| StoreError(DisplayErrorContext(&e).to_string()))?;
            items.insert((str_attr(&item, "pk")?, str_attr(&item, "sk")?), item);
        }
        Ok(items)
    }

    /// Writes and deletes items, 25 to a batch, retrying what DynamoDB leaves unprocessed.
    pub async fn write(&self, puts: Vec<Item>, deletes: Vec<(String, String)>) -> Result<(), StoreError> {
        let mut requests: Vec<WriteRequest> = Vec::with_capacity(puts.len() + deletes.len());
        for item in puts {
            let put = PutRequest::builder().set_item(Some(item)).build().map_err(|e| StoreError(e.to_string()))?;
            requests.push(WriteRequest::builder().put_request(put).build());
        }
        for (pk, sk) in deletes {
            let delete = DeleteRequest::builder()
                .key("pk", s(&pk))
                .key("sk", s(&sk))
                .build()
                .map_err(|e| StoreError(e.to_string()))?;
            requests.push(WriteRequest::builder().delete_request(delete).build());
        }
        for chunk in requests.chunks(25) {
            let mut pending = chunk.to_vec();
            for attempt in 0..8u32 {
                let output =
                    self.client.batch_write_item().request_items(&self.table, pending).send().await.map_err(|e| {
                        StoreError(format!("{}: {}", e.code().unwrap_or("error"), DisplayErrorContext(&e)))
                    })?;
                pending = output.unprocessed_items.and_then(|mut u| u.remove(&self.table)).unwrap_or_default();
                if pending.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            if !pending.is_empty() {
                return Err(StoreError(format!("{} writes stayed unprocessed after retries", pending.len())));
            }
        }
        Ok(())
    }
}

fn s(text: &str) -> AttributeValue {
    AttributeValue::S(text.to_owned())
}

fn n(number: impl ToString) -> AttributeValue {
    AttributeValue::N(number.to_string())
}

fn list_s(values: &[String]) -> AttributeValue {
    AttributeValue::L(values.iter().map(|v| s(v)).collect())
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

fn keyed((pk, sk): (String, String)) -> Item {
    HashMap::from([("pk".to_owned(), AttributeValue::S(pk)), ("sk".to_owned(), AttributeValue::S(sk))])
}

/// A user as an item.
pub fn user_item(user: &UserEntry) -> Item {
    let mut item = keyed(user_key(&user.username));
    item.insert("username".into(), s(&user.username));
    item.insert("password_hash".into(), s(&user.password_hash));
    item
}

/// A rule as an item.
pub fn rule_item(rule: &RuleEntry) -> Item {
    let mut item = keyed(rule_key(rule.priority));
    item.insert("priority".into(), n(rule.priority));
    item.insert(
        "effect".into(),
        s(match rule.effect {
            EffectEntry::Allow => "allow",
            EffectEntry::Deny => "deny",
        }),
    );
    item.insert("topics".into(), list_s(&rule.topics));
    for (name, values) in
        [("usernames", &rule.usernames), ("client_ids", &rule.client_ids), ("source_ips", &rule.source_ips)]
    {
        if let Some(values) = values {
            item.insert(name.into(), list_s(values));
        }
    }
    if let Some(qos) = &rule.qos {
        item.insert("qos".into(), AttributeValue::L(qos.iter().map(n).collect()));
    }
    if let Some(retain) = rule.retain {
        item.insert("retain".into(), AttributeValue::Bool(retain));
    }
    if let Some(auth) = rule.auth {
        item.insert(
            "auth".into(),
            s(match auth {
                AuthEntry::Basic => "basic",
                AuthEntry::Certificate => "certificate",
            }),
        );
    }
    item
}

/// The limits as an item.
pub fn limits_item(limits: &Limits) -> Item {
    let mut item = keyed(limits_key());
    item.insert("max_payload_bytes".into(), n(limits.max_payload_bytes));
    if let Some(v) = limits.messages_per_second {
        item.insert("messages_per_second".into(), n(v));
    }
    if let Some(v) = limits.burst {
        item.insert("burst".into(), n(v));
    }
    if let Some(v) = limits.user_messages_per_second {
        item.insert("user_messages_per_second".into(), n(v));
    }
    if let Some(v) = limits.user_burst {
        item.insert("user_burst".into(), n(v));
    }
    item
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
    items
}

/// Items back into a config: what `pull` prints. Users by name, rules by priority.
pub fn config_from_items(items: &BTreeMap<(String, String), Item>) -> Result<ConfigFile, StoreError> {
    let mut config = ConfigFile::default();
    for ((pk, sk), item) in items {
        match (pk.as_str(), sk.as_str()) {
            (ACL_PARTITION, "limits") => config.limits = limits_from_item(item)?,
            (ACL_PARTITION, sk) if sk.starts_with("rule#") => config.rules.push(rule_from_item(item)?),
            (pk, "user") if pk.starts_with("user#") => config.users.push(user_from_item(item)?),
            _ => return Err(StoreError(format!("the table holds an item that is not config: pk={pk:?} sk={sk:?}"))),
        }
    }
    config.users.sort_by(|a, b| a.username.cmp(&b.username));
    config.rules.sort_by_key(|r| r.priority);
    Ok(config)
}

fn bad(item: &Item, what: &str) -> StoreError {
    let key = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).map_or("?", |v| v.as_str());
    StoreError(format!("item pk={:?} sk={:?}: {what}", key("pk"), key("sk")))
}

fn str_attr(item: &Item, name: &str) -> Result<String, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v.clone()),
        _ => Err(bad(item, &format!("{name} must be a string"))),
    }
}

fn num_attr<T: std::str::FromStr>(item: &Item, name: &str) -> Result<Option<T>, StoreError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::N(v)) => v.parse().map(Some).map_err(|_| bad(item, &format!("{name} is out of range"))),
        Some(_) => Err(bad(item, &format!("{name} must be a number"))),
    }
}

fn list_attr(item: &Item, name: &str) -> Result<Option<Vec<String>>, StoreError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::L(values)) => values
            .iter()
            .map(|v| v.as_s().cloned().map_err(|_| bad(item, &format!("{name} must be a list of strings"))))
            .collect::<Result<_, _>>()
            .map(Some),
        // A string set is accepted too, for hand edits in the console.
        Some(AttributeValue::Ss(values)) => Ok(Some(values.clone())),
        Some(_) => Err(bad(item, &format!("{name} must be a list of strings"))),
    }
}

fn user_from_item(item: &Item) -> Result<UserEntry, StoreError> {
    Ok(UserEntry { username: str_attr(item, "username")?, password_hash: str_attr(item, "password_hash")? })
}

fn rule_from_item(item: &Item) -> Result<RuleEntry, StoreError> {
    let effect = match str_attr(item, "effect")?.as_str() {
        "allow" => EffectEntry::Allow,
        "deny" => EffectEntry::Deny,
        other => return Err(bad(item, &format!("effect {other:?} is not \"allow\" or \"deny\""))),
    };
    let auth = match item.get("auth") {
        None => None,
        Some(_) => Some(match str_attr(item, "auth")?.as_str() {
            "basic" => AuthEntry::Basic,
            "certificate" => AuthEntry::Certificate,
            other => return Err(bad(item, &format!("auth {other:?} is not \"basic\" or \"certificate\""))),
        }),
    };
    let qos = match item.get("qos") {
        None => None,
        Some(AttributeValue::L(values)) => Some(
            values
                .iter()
                .map(|v| {
                    v.as_n().ok().and_then(|q| q.parse().ok()).ok_or_else(|| bad(item, "qos must be a list of numbers"))
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(AttributeValue::Ns(values)) => Some(
            values.iter().map(|q| q.parse().map_err(|_| bad(item, "qos is out of range"))).collect::<Result<_, _>>()?,
        ),
        Some(_) => return Err(bad(item, "qos must be a list of numbers")),
    };
    let retain = match item.get("retain") {
        None => None,
        Some(AttributeValue::Bool(b)) => Some(*b),
        Some(_) => return Err(bad(item, "retain must be a boolean")),
    };
    Ok(RuleEntry {
        priority: num_attr(item, "priority")?.ok_or_else(|| bad(item, "priority is missing"))?,
        effect,
        topics: list_attr(item, "topics")?.ok_or_else(|| bad(item, "topics is missing"))?,
        usernames: list_attr(item, "usernames")?,
        client_ids: list_attr(item, "client_ids")?,
        source_ips: list_attr(item, "source_ips")?,
        qos,
        retain,
        auth,
    })
}

fn limits_from_item(item: &Item) -> Result<Limits, StoreError> {
    Ok(Limits {
        max_payload_bytes: num_attr(item, "max_payload_bytes")?.unwrap_or(super::DEFAULT_MAX_PAYLOAD_BYTES),
        messages_per_second: num_attr(item, "messages_per_second")?,
        burst: num_attr(item, "burst")?,
        user_messages_per_second: num_attr(item, "user_messages_per_second")?,
        user_burst: num_attr(item, "user_burst")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_user_is_one_item_keyed_by_name() {
        let item = user_item(&UserEntry { username: "user0".into(), password_hash: "$x".into() });
        assert_eq!(item["pk"], s("user#user0"));
        assert_eq!(item["sk"], s("user"));
    }

    #[test]
    fn a_hand_edited_item_of_the_wrong_type_is_named() {
        let mut item = rule_item(&RuleEntry {
            priority: 5,
            effect: EffectEntry::Allow,
            topics: vec!["a".into()],
            usernames: None,
            client_ids: None,
            source_ips: None,
            qos: None,
            retain: None,
            auth: None,
        });
        item.insert("retain".into(), s("yes"));
        let e = rule_from_item(&item).unwrap_err().to_string();
        assert!(e.contains("sk=\"rule#5\"") && e.contains("retain must be a boolean"), "{e}");
    }
}
