//! `serve` as users run it: the built binary, in front of Debian's mosquitto
//! (started here on a free loopback port) or its embedded broker, with a real
//! MQTT 5 subscriber checking what arrives.
//!
//! One test binary: each module below tests one theme, and `support` holds
//! what they share (mosquitto, `serve`, a client, subscribers).
// A test unwraps and prints: its failure, and what it saw, are its answer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

#[path = "../common/mod.rs"]
mod common;
mod support;

mod admin;
mod aws;
mod batch;
mod broker;
mod browsers;
mod config;
mod delivery;
mod fleet;
mod http_limits;
mod replies;
