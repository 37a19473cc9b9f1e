//! Admission of long-lived connections (SSE event streams, WebSocket
//! attaches, and `/output` downloads, each with its own [`Admission`]): a
//! cap per instance and per API key, with a guard that gives the slot back (and lowers `sse_connections_active`) when
//! the connection ends, however it ends. No code path can leak a slot: the
//! only way to release is dropping the guard.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::IntGauge;
use uuid::Uuid;

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `RDEV_SSE_MAX_CONNECTIONS` reached on this instance.
    Instance(usize),
    /// `RDEV_SSE_MAX_PER_KEY` reached for this key on this instance.
    Key(usize),
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_key: HashMap<Uuid, usize>,
}

/// Counts SSE connections of this instance.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_key: usize,
    counts: Mutex<Counts>,
    gauge: IntGauge,
}

/// One admitted connection; dropping it releases the slot.
#[derive(Debug)]
pub struct Slot {
    limiter: Arc<Admission>,
    key: Uuid,
}

impl Admission {
    /// A limiter with both caps, reporting to `gauge`.
    pub fn new(max_total: usize, max_per_key: usize, gauge: IntGauge) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_key,
            counts: Mutex::default(),
            gauge,
        })
    }

    /// Admits a connection for `key`, or says which cap is reached.
    pub fn admit(self: &Arc<Self>, key: Uuid) -> Result<Slot, Refusal> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if c.total >= self.max_total {
            return Err(Refusal::Instance(self.max_total));
        }
        let n = c.per_key.entry(key).or_default();
        if *n >= self.max_per_key {
            return Err(Refusal::Key(self.max_per_key));
        }
        *n += 1;
        c.total += 1;
        self.gauge.inc();
        Ok(Slot {
            limiter: self.clone(),
            key,
        })
    }

    /// Open connections on this instance.
    pub fn active(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self
            .limiter
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_key.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_key.remove(&self.key);
            }
        }
        self.limiter.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_apply_per_key_and_per_instance_and_slots_return() {
        let gauge = IntGauge::new("g", "g").expect("gauge");
        let l = Admission::new(3, 2, gauge.clone());
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let a1 = l.admit(a).expect("a1");
        let _a2 = l.admit(a).expect("a2");
        assert_eq!(l.admit(a).err(), Some(Refusal::Key(2)));
        let _b1 = l.admit(b).expect("b1");
        assert_eq!(l.admit(b).err(), Some(Refusal::Instance(3)));
        assert_eq!(gauge.get(), 3);
        drop(a1);
        assert_eq!(gauge.get(), 2);
        assert!(
            l.admit(b).is_ok(),
            "a freed slot is usable (and dropped at once)"
        );
        assert_eq!((l.active(), gauge.get()), (2, 2));
    }
}
