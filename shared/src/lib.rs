//! `rdev-shared`: what two or more rdev binaries need.
//!
//! Layers, bottom up (a module only uses modules above it in this list):
//! [`config`], [`secret`], [`crypto`], [`redact`], [`lifecycle`] and [`readiness`] → [`containment`], [`interactive`] → [`domain`], [`policy`], [`ratelimit`],
//! [`webhook`], [`webhook_sign`] and [`netguard`] → [`mq`] → [`db`] (adapters; the outbox stores
//! [`mq::OutgoingMessage`]s) → `kube` (feature `kube`) → [`relay`] (services) → [`telemetry`].
//! No HTTP handlers live here. `tests/layering.rs` checks the order.

pub mod breaker;
pub mod cache;
pub mod config;
pub mod containment;
pub mod crypto;
pub mod db;
pub mod domain;
pub mod interactive;
#[cfg(feature = "kube")]
pub mod kube;
pub mod lifecycle;
pub mod metrics;
pub mod mq;
pub mod netguard;
pub mod policy;
pub mod ratelimit;
pub mod readiness;
pub mod redact;
pub mod relay;
pub mod secret;
pub mod telemetry;
pub mod webhook;
pub mod webhook_sign;

#[cfg(feature = "test-support")]
pub mod test_support;
