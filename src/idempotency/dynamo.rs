//! Records in the config table (the Lambda function): one item per key,
//! `pk = idem#{identity}#{key}`, `sk = idem`, with the attributes `state`,
//! `fingerprint`, `message_id`, `owner` (the id of the request that wrote it),
//! `lease_until` (Unix ms) and `expires_at` (Unix seconds: the table's TTL
//! attribute, template.yaml).
//!
//! A claim is one conditional `PutItem` when the key is new (`attribute_not_exists`),
//! so two concurrent first requests cannot both publish: DynamoDB lets one
//! write through and refuses the other. A refused write reads the item
//! (strongly consistent) and decides from it; a takeover of an unknown outcome
//! is another conditional write, on the item being as read. The SDK retries a
//! call whose answer it lost: a refused write that finds the item owned by this
//! very claim knows its first try landed. An outcome is a write conditioned on
//! the item being this claim's own in-flight record (or absent). TTL deletes
//! expired items within days, not at once, so an expired item counts as absent.

use std::collections::HashMap;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use super::{decide, now_ms, Begin, Claim, KeyStore, Outcome, Record, State};
use crate::store::{StoreError, StoreFuture};

/// The sort key of every record.
const SORT_KEY: &str = "idem";

/// Attempts at a claim whose conditional write keeps meeting another request's.
const ATTEMPTS: usize = 3;

/// The config table's records.
#[derive(Debug, Clone)]
pub struct DynamoKeys {
    client: Client,
    table: String,
}

fn s(text: &str) -> AttributeValue {
    AttributeValue::S(text.to_owned())
}

fn n(number: u64) -> AttributeValue {
    AttributeValue::N(number.to_string())
}

/// A write's error, unless DynamoDB refused its condition: the item is
/// another request's record now, and this outcome is not its to write.
fn unless_refused<E>(error: SdkError<E>) -> Result<(), StoreError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match error.code() {
        Some("ConditionalCheckFailedException") => Ok(()),
        _ => Err(StoreError::of(error)),
    }
}

/// The item of `claim`'s key.
fn key(claim: &Claim) -> HashMap<String, AttributeValue> {
    HashMap::from([("pk".to_owned(), s(&claim.id)), ("sk".to_owned(), s(SORT_KEY))])
}

/// A condition: the item is the claim's own in-flight record.
const OWN_IN_FLIGHT: &str = "#state = :inflight AND #owner = :owner";

/// The names and values [`OWN_IN_FLIGHT`] refers to.
fn own_in_flight(claim: &Claim) -> (HashMap<String, String>, HashMap<String, AttributeValue>) {
    let names = HashMap::from([("#state".to_owned(), "state".to_owned()), ("#owner".to_owned(), "owner".to_owned())]);
    let values = HashMap::from([
        (":inflight".to_owned(), s(State::InFlight.letter())),
        (":owner".to_owned(), s(&claim.owner.to_string())),
    ]);
    (names, values)
}

impl DynamoKeys {
    /// Records in the table `table`, through `client` (and its timeouts): the config table's.
    pub fn new(client: Client, table: &str) -> DynamoKeys {
        DynamoKeys { client, table: table.to_owned() }
    }

    fn item(claim: &Claim, record: &Record) -> HashMap<String, AttributeValue> {
        let expires_at = (now_ms() / 1000) + claim.keep_for(record.state).as_secs();
        HashMap::from([
            ("pk".to_owned(), s(&claim.id)),
            ("sk".to_owned(), s(SORT_KEY)),
            ("state".to_owned(), s(record.state.letter())),
            ("fingerprint".to_owned(), s(&record.fingerprint)),
            ("message_id".to_owned(), s(&record.message_id.to_string())),
            ("owner".to_owned(), s(&record.owner.to_string())),
            ("lease_until".to_owned(), n(record.lease_until_ms)),
            ("expires_at".to_owned(), n(expires_at)),
        ])
    }

    /// Releases a key whose publish certainly did not go out: the claim's own
    /// first claim goes; a takeover puts the unknown outcome back.
    async fn release(&self, claim: &Claim) -> Result<(), StoreError> {
        let (names, mut values) = own_in_flight(claim);
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(claim)))
            .condition_expression(format!("{OWN_IN_FLIGHT} AND message_id = :owner"))
            .set_expression_attribute_names(Some(names.clone()))
            .set_expression_attribute_values(Some(values.clone()))
            .send()
            .await;
        match deleted {
            Ok(_) => return Ok(()),
            Err(error) => unless_refused(error)?,
        }
        values.extend([(":unknown".to_owned(), s(State::Unknown.letter())), (":zero".to_owned(), n(0))]);
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(claim)))
            .update_expression("SET #state = :unknown, lease_until = :zero")
            .condition_expression(OWN_IN_FLIGHT)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await
            .map_or_else(unless_refused, |_| Ok(()))
    }

    /// The record of `claim`'s key, `None` if there is none or it expired.
    async fn read(&self, claim: &Claim) -> Result<Option<Record>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(claim)))
            .consistent_read(true)
            .send()
            .await
            .map_err(StoreError::of)?;
        let Some(item) = output.item else { return Ok(None) };
        let text = |name: &str| match item.get(name) {
            Some(AttributeValue::S(text)) => Some(text.as_str()),
            _ => None,
        };
        let number = |name: &str| match item.get(name) {
            Some(AttributeValue::N(number)) => number.parse::<u64>().ok(),
            _ => None,
        };
        if number("expires_at").is_some_and(|at| at < now_ms() / 1000) {
            return Ok(None);
        }
        let record = (|| {
            Some(Record {
                state: State::from_letter(text("state")?)?,
                fingerprint: text("fingerprint")?.to_owned(),
                message_id: text("message_id")?.parse().ok()?,
                owner: text("owner")?.parse().ok()?,
                lease_until_ms: number("lease_until")?,
            })
        })();
        record
            .map(Some)
            .ok_or_else(|| StoreError::new(format!("the item pk={:?} is not an idempotency record", claim.id)))
    }

    /// Writes `record` if the item is as `seen` (absent or expired, for `None`);
    /// `false` if another request changed it first.
    async fn write_if(&self, claim: &Claim, record: &Record, seen: Option<&Record>) -> Result<bool, StoreError> {
        let put = self.client.put_item().table_name(&self.table).set_item(Some(DynamoKeys::item(claim, record)));
        let put = match seen {
            None => put
                .condition_expression("attribute_not_exists(pk) OR expires_at < :now")
                .expression_attribute_values(":now", n(now_ms() / 1000)),
            Some(seen) => put
                .condition_expression("#state = :state AND lease_until = :lease AND message_id = :id")
                .expression_attribute_names("#state", "state")
                .expression_attribute_values(":state", s(seen.state.letter()))
                .expression_attribute_values(":lease", n(seen.lease_until_ms))
                .expression_attribute_values(":id", s(&seen.message_id.to_string())),
        };
        match put.send().await {
            Ok(_) => Ok(true),
            Err(error) if error.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => {
                Ok(false)
            }
            Err(error) => Err(StoreError::of(error)),
        }
    }
}

impl KeyStore for DynamoKeys {
    fn begin<'a>(&'a self, claim: &'a Claim) -> StoreFuture<'a, Begin> {
        Box::pin(async move {
            // Most keys are new: try the first request's write before reading anything.
            let (begin, first) = decide(None, claim, now_ms());
            if self.write_if(claim, first.as_ref().expect("a new key is written"), None).await? {
                return Ok(begin);
            }
            for _ in 0..ATTEMPTS {
                let stored = self.read(claim).await?;
                if let Some(ours) = stored.as_ref().filter(|r| r.state == State::InFlight && r.owner == claim.owner) {
                    // This claim's own write landed, and only its answer was lost (the SDK retried).
                    return Ok(if ours.message_id == claim.owner {
                        Begin::Fresh
                    } else {
                        Begin::UnknownOutcome(ours.message_id)
                    });
                }
                let (begin, write) = decide(stored.as_ref(), claim, now_ms());
                let Some(record) = write else { return Ok(begin) };
                if self.write_if(claim, &record, stored.as_ref()).await? {
                    return Ok(begin);
                }
            }
            // Others keep taking the key between a read and a write: one of them holds it.
            Ok(Begin::InFlight)
        })
    }

    fn finish<'a>(&'a self, claim: &'a Claim, outcome: Outcome) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let state = match outcome {
                Outcome::Delivered => State::Done,
                Outcome::Unknown => State::Unknown,
                Outcome::NotDelivered => return self.release(claim).await,
            };
            let record = Record {
                state,
                fingerprint: claim.fingerprint.clone(),
                message_id: claim.message_id,
                owner: claim.owner,
                lease_until_ms: 0,
            };
            let (names, values) = own_in_flight(claim);
            self.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(DynamoKeys::item(claim, &record)))
                .condition_expression(format!("attribute_not_exists(pk) OR ({OWN_IN_FLIGHT})"))
                .set_expression_attribute_names(Some(names))
                .set_expression_attribute_values(Some(values))
                .send()
                .await
                .map_or_else(unless_refused, |_| Ok(()))
        })
    }
}
