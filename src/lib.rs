//! token-limits: per-user daily LLM token limits, checked and recorded atomically.

pub mod app;
pub mod auth;
pub mod config;
pub mod http;
pub mod lifecycle;
pub mod metrics;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod usage;
