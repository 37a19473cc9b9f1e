//! A one-line spinner on stderr for while a command waits in the queue.
//! Shown only on a terminal, so logs and pipes never see it.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

/// A running (or stopped) spinner. Clones control the same spinner.
#[derive(Default, Clone)]
pub struct Spinner {
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Spinner {
    /// Starts spinning with `message` when stderr is a terminal; otherwise does nothing.
    pub fn start(&self, message: String) {
        let Ok(mut task) = self.task.lock() else {
            return;
        };
        if task.is_some() || !std::io::stderr().is_terminal() {
            return;
        }
        *task = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            for frame in FRAMES.iter().cycle() {
                tick.tick().await;
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K{frame} {message}");
                let _ = err.flush();
            }
        }));
    }

    /// Stops and erases the line; a no-op when not spinning.
    pub fn stop(&self) {
        let Some(t) = self.task.lock().ok().and_then(|mut t| t.take()) else {
            return;
        };
        t.abort();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K");
        let _ = err.flush();
    }
}
