//! Errors of the worker library.

use std::net::SocketAddr;

use rdev_shared::db::DbError;
use rdev_shared::mq::MqError;

/// Fatal errors of [`crate::run`].
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The database settings are unusable.
    #[error(transparent)]
    Db(#[from] DbError),
    /// RabbitMQ failed in a way that retrying cannot fix.
    #[error(transparent)]
    Mq(#[from] MqError),
    /// The health endpoint could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Requested address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The workspace root cannot be created.
    #[error("workspace root {path}: {source}")]
    Workspace {
        /// The configured root.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}
