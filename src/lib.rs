//! token-limits: per-user daily LLM token limits, checked and recorded atomically.

pub mod app;
pub mod auth;
pub mod config;
pub mod http;
pub mod lifecycle;
pub mod metrics;
pub mod notify;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod usage;

// The emulator support of `tests/` names the crate by its name, also in the unit tests.
#[cfg(test)]
extern crate self as token_limits;
