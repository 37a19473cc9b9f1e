//! Which output bytes are stored when a command prints more than its
//! project's `max_output_bytes` M (docs/API.md, "Commands"): the first M/2 bytes (the
//! head) and the most recent M − M/2 bytes (the tail), nothing in between.
//!
//! Pure bookkeeping, no I/O, so every boundary can be unit-tested. Each
//! chunk read from the process becomes one or more *pieces* with
//! consecutive sequence numbers: a chunk crossing the end of the head is
//! split there, and a tail chunk too big for the tail is split into a
//! dropped front and a stored back. Every piece is published live; only
//! `store` pieces are written to PostgreSQL, and tail pieces are deleted
//! again when newer ones push them out. A reader sees the missing middle as
//! a gap in the stored sequence numbers.
//!
//! Memory: the tail is remembered as `(seq, len)` pairs only, at most
//! `max_tail_pieces` of them; past that, the oldest tail pieces are evicted
//! early (the stored tail is then shorter than M/2 — only with floods of
//! tiny writes).

use std::collections::VecDeque;
use std::ops::Range;

/// Default cap on remembered tail pieces (16 bytes each: 1 MiB).
pub const MAX_TAIL_PIECES: usize = 65_536;

/// One numbered piece of a chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Its sequence number.
    pub seq: i64,
    /// Its bytes within the chunk.
    pub range: Range<usize>,
    /// Whether it is written to PostgreSQL.
    pub store: bool,
}

/// What to do with one chunk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The chunk's pieces, in order, covering it exactly.
    pub pieces: Vec<Piece>,
    /// Stored pieces (of earlier chunks, or of this one never) to delete.
    pub evict: Vec<i64>,
}

/// Head/tail bookkeeping of one command's stored output.
#[derive(Debug)]
pub struct HeadTail {
    head_cap: u64,
    tail_cap: u64,
    max_tail_pieces: usize,
    head_used: u64,
    tail: VecDeque<(i64, u64)>,
    tail_bytes: u64,
    next_seq: i64,
    truncated: bool,
}

impl HeadTail {
    /// Bookkeeping for a cap of `max_bytes` stored bytes.
    pub fn new(max_bytes: u64) -> Self {
        Self::with_tail_limit(max_bytes, MAX_TAIL_PIECES)
    }

    /// Same, remembering at most `max_tail_pieces` tail pieces (≥ 1).
    pub fn with_tail_limit(max_bytes: u64, max_tail_pieces: usize) -> Self {
        let head_cap = max_bytes / 2;
        Self {
            head_cap,
            tail_cap: max_bytes - head_cap,
            max_tail_pieces: max_tail_pieces.max(1),
            head_used: 0,
            tail: VecDeque::new(),
            tail_bytes: 0,
            next_seq: 1,
            truncated: false,
        }
    }

    /// Whether any byte was dropped or evicted.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Bytes currently stored (head plus tail).
    pub fn stored_bytes(&self) -> u64 {
        self.head_used + self.tail_bytes
    }

    fn take_seq(&mut self) -> i64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn evict_oldest(&mut self, evict: &mut Vec<i64>) {
        if let Some((seq, len)) = self.tail.pop_front() {
            self.tail_bytes -= len;
            self.truncated = true;
            evict.push(seq);
        }
    }

    /// Plans the storage of the next chunk, `len` bytes long.
    pub fn admit(&mut self, len: usize) -> Plan {
        let mut plan = Plan::default();
        if len == 0 {
            return plan;
        }
        let total = len as u64;
        let mut offset = 0u64;

        if self.head_used < self.head_cap {
            let take = total.min(self.head_cap - self.head_used);
            let seq = self.take_seq();
            plan.pieces.push(Piece {
                seq,
                range: 0..take as usize,
                store: true,
            });
            self.head_used += take;
            offset = take;
            if offset == total {
                return plan;
            }
        }

        let rest = total - offset;
        if rest > self.tail_cap {
            // Nothing older can stay; of this piece only its end fits.
            while !self.tail.is_empty() {
                self.evict_oldest(&mut plan.evict);
            }
            self.truncated = true;
            let dropped = rest - self.tail_cap;
            let seq = self.take_seq();
            let split = (offset + dropped) as usize;
            plan.pieces.push(Piece {
                seq,
                range: offset as usize..split,
                store: false,
            });
            if self.tail_cap > 0 {
                let seq = self.take_seq();
                plan.pieces.push(Piece {
                    seq,
                    range: split..len,
                    store: true,
                });
                self.tail.push_back((seq, self.tail_cap));
                self.tail_bytes = self.tail_cap;
            }
        } else {
            while self.tail_bytes + rest > self.tail_cap || self.tail.len() >= self.max_tail_pieces
            {
                self.evict_oldest(&mut plan.evict);
            }
            let seq = self.take_seq();
            plan.pieces.push(Piece {
                seq,
                range: offset as usize..len,
                store: true,
            });
            self.tail.push_back((seq, rest));
            self.tail_bytes += rest;
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Replays chunks through a model of the stored rows and checks the
    /// invariants after every step; returns the stored bytes in seq order.
    fn simulate(max: u64, tail_limit: usize, chunks: &[Vec<u8>]) -> (Vec<u8>, HeadTail) {
        let mut r = HeadTail::with_tail_limit(max, tail_limit);
        let mut stored: BTreeMap<i64, Vec<u8>> = BTreeMap::new();
        let mut last_seq = 0;
        let mut produced = 0u64;
        for chunk in chunks {
            let plan = r.admit(chunk.len());
            for seq in &plan.evict {
                assert!(
                    stored.remove(seq).is_some(),
                    "evicted seq {seq} was not stored"
                );
            }
            let mut covered = 0;
            for p in &plan.pieces {
                assert_eq!(p.seq, last_seq + 1, "seqs are consecutive");
                last_seq = p.seq;
                assert_eq!(p.range.start, covered, "pieces cover the chunk in order");
                assert!(!p.range.is_empty(), "no empty pieces");
                covered = p.range.end;
                if p.store {
                    stored.insert(p.seq, chunk[p.range.clone()].to_vec());
                }
            }
            assert_eq!(covered, chunk.len());
            produced += chunk.len() as u64;
            let bytes: u64 = stored.values().map(|v| v.len() as u64).sum();
            assert_eq!(bytes, r.stored_bytes());
            assert!(bytes <= max, "stored {bytes} > cap {max}");
            assert_eq!(
                r.truncated(),
                produced > bytes,
                "truncated iff something is missing"
            );
        }
        (stored.into_values().flatten().collect(), r)
    }

    fn output_of(chunks: &[Vec<u8>]) -> Vec<u8> {
        chunks.concat()
    }

    fn pattern(n: usize, salt: usize) -> Vec<u8> {
        (0..n).map(|i| b'a' + ((i * 7 + salt) % 26) as u8).collect()
    }

    fn check_head_and_tail(max: u64, chunks: &[Vec<u8>]) {
        let all = output_of(chunks);
        let (stored, r) = simulate(max, MAX_TAIL_PIECES, chunks);
        if all.len() as u64 <= max {
            assert_eq!(stored, all, "everything fits: nothing is dropped");
            assert!(!r.truncated());
            return;
        }
        assert!(r.truncated());
        let head = (max / 2) as usize;
        assert_eq!(
            &stored[..head],
            &all[..head],
            "the head is the output's start"
        );
        let tail = &stored[head..];
        assert!(tail.len() as u64 <= max - max / 2);
        assert_eq!(
            tail,
            &all[all.len() - tail.len()..],
            "the tail is the output's end"
        );
    }

    #[test]
    fn output_under_the_cap_is_kept_whole() {
        check_head_and_tail(1000, &[pattern(300, 0), pattern(300, 1), pattern(400, 2)]);
        check_head_and_tail(1000, &[pattern(1000, 0)]);
        check_head_and_tail(10, &[pattern(10, 0)]);
    }

    #[test]
    fn one_byte_over_the_cap_truncates() {
        check_head_and_tail(1000, &[pattern(1001, 0)]);
        check_head_and_tail(1000, &[pattern(500, 0), pattern(501, 1)]);
        check_head_and_tail(1000, &[pattern(1000, 0), pattern(1, 1)]);
    }

    #[test]
    fn chunk_crossing_the_head_is_split_there() {
        let mut r = HeadTail::new(1000);
        assert_eq!(
            r.admit(400).pieces,
            vec![Piece {
                seq: 1,
                range: 0..400,
                store: true
            }]
        );
        let plan = r.admit(300);
        assert_eq!(
            plan.pieces,
            vec![
                Piece {
                    seq: 2,
                    range: 0..100,
                    store: true
                },
                Piece {
                    seq: 3,
                    range: 100..300,
                    store: true
                },
            ]
        );
        assert!(plan.evict.is_empty());
        assert!(!r.truncated());
    }

    #[test]
    fn tail_evicts_whole_oldest_pieces() {
        let mut r = HeadTail::new(1000);
        r.admit(500); // head, seq 1
        r.admit(200); // tail, seq 2
        r.admit(200); // tail, seq 3
        let plan = r.admit(200); // 600 > 500: seq 2 goes
        assert_eq!(plan.evict, vec![2]);
        assert_eq!(
            plan.pieces,
            vec![Piece {
                seq: 4,
                range: 0..200,
                store: true
            }]
        );
        assert!(r.truncated());
        assert_eq!(r.stored_bytes(), 900);
    }

    #[test]
    fn chunk_bigger_than_the_cap_keeps_its_start_and_end() {
        let mut r = HeadTail::new(100);
        let plan = r.admit(1000);
        assert_eq!(
            plan.pieces,
            vec![
                Piece {
                    seq: 1,
                    range: 0..50,
                    store: true
                },
                Piece {
                    seq: 2,
                    range: 50..950,
                    store: false
                },
                Piece {
                    seq: 3,
                    range: 950..1000,
                    store: true
                },
            ]
        );
        check_head_and_tail(100, &[pattern(1000, 0)]);
        check_head_and_tail(100, &[pattern(10, 0), pattern(1000, 1), pattern(30, 2)]);
    }

    #[test]
    fn tiny_caps_work() {
        for max in [1, 2, 3, 10, 11] {
            check_head_and_tail(
                max,
                &[pattern(7, 0), pattern(3, 1), pattern(25, 2), pattern(1, 3)],
            );
            check_head_and_tail(max, &[pattern(100, 0)]);
        }
        // M = 1: no head, a one-byte tail.
        let (stored, _) = simulate(1, MAX_TAIL_PIECES, &[b"abc".to_vec(), b"xyz".to_vec()]);
        assert_eq!(stored, b"z");
    }

    #[test]
    fn many_one_byte_chunks_keep_head_and_tail() {
        let chunks: Vec<Vec<u8>> = (0..5000).map(|i| vec![b'a' + (i % 26) as u8]).collect();
        check_head_and_tail(10, &chunks);
        check_head_and_tail(999, &chunks);
        check_head_and_tail(5000, &chunks);
    }

    #[test]
    fn mixed_sizes_against_the_model() {
        let sizes = [1, 65536, 3, 700, 65536, 12, 5000, 1, 1, 40000, 65535, 2];
        let chunks: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| pattern(n, i))
            .collect();
        for max in [1, 10, 1000, 65536, 100_000, 131_072, 1 << 20] {
            check_head_and_tail(max, &chunks);
        }
    }

    #[test]
    fn tail_memory_is_bounded_by_the_piece_limit() {
        let chunks: Vec<Vec<u8>> = (0..1000).map(|i| vec![b'a' + (i % 26) as u8]).collect();
        let (stored, r) = simulate(100, 16, &chunks);
        assert!(r.tail.len() <= 16);
        assert!(r.truncated());
        let all = output_of(&chunks);
        assert_eq!(stored.len(), 50 + 16);
        assert_eq!(&stored[..50], &all[..50]);
        assert_eq!(&stored[50..], &all[all.len() - 16..]);
    }
}
