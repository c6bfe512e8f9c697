//! mqtt-http-publish: one HTTP `POST /topics/{topic}` becomes one MQTT publish,
//! with authentication and per-topic ACLs. The API follows Tencent Cloud MQTT's
//! HTTP publish API; docs/api.md and `openapi.yaml` are the contract.
//!
//! # Layout
//!
//! Data flows one way, from an entry point through the contract and the
//! decisions to an edge:
//!
//! - [`contract`]: the HTTP contract. An entry point's request becomes an
//!   [`contract::HttpRequest`], then, from its request line and headers, a
//!   [`contract::PublishHead`] or the 4xx that says why not; with its
//!   [`contract::Body`], read only once the request is authorized, a
//!   [`contract::PublishRequest`]. [`contract::ApiError`] is where errors
//!   become statuses, and [`contract::ErrorCode`] lists every code the API
//!   answers with.
//! - [`auth`]: who is calling (Basic against password hashes, or a client certificate).
//! - [`acl`]: whether they may publish there (priorities, filters, conditions).
//! - [`config`]: the users, rules and limits those decisions read, behind the
//!   [`config::source::ConfigStore`] trait: a TOML file or a DynamoDB table
//!   (through caches); where a process's config comes from, chosen once for
//!   both entry points ([`config::open`]); and the tools that manage them.
//! - [`publish`]: the edge towards a broker: the [`publish::Publisher`] trait
//!   and its AWS IoT Core adapter.
//! - [`replies`]: the edge that waits for a device's reply (`ResponseTimeout`):
//!   one MQTT 5 connection subscribing to response topics, to the broker or to
//!   AWS IoT over a SigV4-signed WebSocket.
//! - [`session`]: one supervised MQTT 5 connection (reconnect and backoff,
//!   what goes with a dropped session, the signal that it is up, TCP_NODELAY),
//!   which the pool of `publish::mqtt` and the reply connection each run.
//! - [`aws`]: the AWS SDK config the IoT publisher and the config table share.
//! - [`quota`]: the `[limits]` rate limits (429), each source address's
//!   budget of password checks, and (`serve --redis`, `quota::redis`) the
//!   quotas a fleet shares.
//! - [`idempotency`]: `Idempotency-Key` records, so that a retry publishes
//!   nothing twice, and their three stores side by side: in memory, in a
//!   fleet's Redis, or in the config table.
//! - [`store`]: what every store has in common: its future, its error, and
//!   (`serve`) the connection to a fleet's Redis.
//! - [`cause`]: the failure an error keeps underneath it, and the chain a log line prints.
//! - [`metrics`]: the process's counters and histograms (`serve --admin-listen`).
//! - [`service`]: the one code path that strings them together: a request
//!   routed to an [`service::Operation`], then the same stages for every
//!   operation (authenticate, authorize, the operation's own checks and its
//!   body, claim the key, admit, execute, answer).
//! - `serve` (cargo feature `serve`, on by default): the entry point as an
//!   HTTP(S) server of its own, in front of an MQTT 5 broker (`publish::mqtt`)
//!   or one it embeds, and its command line options (`serve::options`). The
//!   Lambda function is built without it.
//! - [`lambda`]: the AWS Lambda entry point: event decoding and encoding, the
//!   runtime loop, and the function's wiring, its service built from its
//!   environment ([`lambda::function`]).
//! - [`cli`]: the command line (`passwd`, `config`, `user`).
//! - `fakes` (tests only): an in-process publisher and config store, so that
//!   `cargo test --lib` runs the whole decision path without moto or a broker.
//! - [`logs`]: where log lines go (JSON on Lambda, a background writer for `serve`).

pub mod acl;
pub mod auth;
pub mod aws;
pub mod cause;
pub mod cli;
pub mod config;
pub mod contract;
#[cfg(test)]
mod fakes;
pub mod idempotency;
pub mod lambda;
pub mod logs;
pub mod metrics;
pub mod publish;
pub mod quota;
pub mod replies;
#[cfg(feature = "serve")]
pub mod serve;
pub mod service;
pub mod session;
pub mod store;
