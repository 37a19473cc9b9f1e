//! End-to-end tests: real API, worker and dispatcher against real PostgreSQL
//! and RabbitMQ. Each test has its own database and AMQP prefix.

mod api_errors;
mod commands;
mod fleet;
mod observability;
mod projects;
mod sse;
mod support;
mod webhooks;
