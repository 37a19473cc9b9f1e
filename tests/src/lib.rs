//! End-to-end tests of rdev live in `tests/e2e/`: they start the real API,
//! worker and dispatcher in-process against real PostgreSQL and RabbitMQ.
