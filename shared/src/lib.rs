//! `rdev-shared`: what two or more rdev binaries need.
//!
//! Layers, bottom up (a module only uses modules above it in this list):
//! [`config`], [`secret`], [`crypto`] and [`redact`] → [`containment`], [`interactive`] → [`domain`], [`policy`], [`ratelimit`],
//! [`webhook`], [`webhook_sign`] and [`netguard`] → [`db`] and [`mq`] (adapters) →
//! [`kube`] (feature `kube`) → [`relay`] (services) → [`telemetry`]. No HTTP handlers live here.

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
pub mod metrics;
pub mod mq;
pub mod netguard;
pub mod policy;
pub mod ratelimit;
pub mod redact;
pub mod relay;
pub mod secret;
pub mod telemetry;
pub mod validate;
pub mod webhook;
pub mod webhook_sign;

#[cfg(feature = "test-support")]
pub mod test_support;
