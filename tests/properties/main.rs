//! Property tests: the product's matchers and decoders against plain reference
//! implementations written here from the rules they follow (MQTT 5 §4.7,
//! docs/aws.md's table of what each event source delivers, first-match ACLs).
//!
//! - topic filters: `TopicFilter::matches` and a one-rule ACL (its trie) agree
//!   with a level-by-level reference matcher;
//! - paths: a topic, percent-encoded by a client and delivered as each event
//!   source delivers it, parses back to itself, or is refused as the topic
//!   itself would be;
//! - the ACL: a rule set compiled from config entries decides as a linear scan
//!   in priority order with reference matchers for every condition;
//! - AWS IoT's property headers and W3C trace context: user properties from the
//!   header (in either JSON spelling), then `UserProp.N`, then a valid trace
//!   context, in that order; any header value parses or is a 400 naming the
//!   header; a trace context never refuses a request; two spellings of one
//!   property conflict exactly when their values differ;
//! - batches: each message of a `POST /messages` answers as its single
//!   publish would, and the batch publishes what the singles would.
//!
//! One test binary: a module per part above (`topic_filters`, `paths`, `acl`,
//! `headers`), and two more: `mqtt_text`, text a broker would take for a
//! malformed packet never reaching it, and `browsers`, which requests get a
//! preflight's 204 and which POSTs are refused.
// A test unwraps and prints: its failure, and what it saw, are its answer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod acl;
mod batch;
mod browsers;
mod headers;
mod mqtt_text;
mod paths;
mod topic_filters;
