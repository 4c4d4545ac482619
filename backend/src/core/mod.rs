//! Cross-cutting pieces every other module may use.

pub mod backoff;
pub mod metrics;
pub mod redact;
pub mod tasks;
