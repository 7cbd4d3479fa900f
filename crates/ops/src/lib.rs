//! The shared runtime of agentmon's two services.
//!
//! Both the watcher and bot-bridge need the same operational surface: JSON logs
//! with trace context, Prometheus metrics, health endpoints, one HTTP middleware
//! stack, retries with jitter, graceful shutdown, secrets that cannot leak and
//! layered configuration. Keeping it here means each concern has one
//! implementation and the two services behave the same to an operator.

pub mod backoff;
pub mod config;
pub mod health;
pub mod http;
pub mod metrics;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod trace;

pub use backoff::Backoff;
pub use health::{Health, Status};
pub use metrics::Metrics;
pub use secret::Secret;
pub use shutdown::Shutdown;
