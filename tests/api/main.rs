#![allow(
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    reason = "a test binary: helpers are shared between its modules and may panic"
)]

//! API tests: the real service on an ephemeral loopback port against the real mock upstream,
//! on real time with short intervals. One test binary.

mod accounts;
mod admin;
mod budget;
mod fault_suite;
mod faults;
mod helpers;
mod isolation;
mod listeners;
mod metrics;
mod openapi;
mod shutdown;
mod tenants;
mod typing;
mod validation;
mod webhooks;
