//! The wire format of live output on the output exchange: the event kind,
//! sequence number and stream travel as headers, the bytes as the body.

use std::collections::BTreeMap;

use bytes::Bytes;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use crate::domain::OutputStream;

/// Header naming the kind of an output message (`chunk`, `status`, `end`).
const H_KIND: &str = "kind";
const H_SEQ: &str = "seq";
const H_STREAM: &str = "stream";

pub(super) fn field_table(headers: &BTreeMap<String, String>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in headers {
        t.insert(k.as_str().into(), AMQPValue::LongString(v.as_str().into()));
    }
    t
}

/// Reads a string header of a message.
pub fn header_str<'a>(props: &'a BasicProperties, key: &str) -> Option<&'a [u8]> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(&ShortString::from(key))? {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// The string headers of a message as name/value pairs (trace context).
pub fn header_pairs(props: &BasicProperties) -> Vec<(String, String)> {
    let Some(headers) = props.headers().as_ref() else {
        return Vec::new();
    };
    headers
        .inner()
        .iter()
        .filter_map(|(k, v)| match v {
            AMQPValue::LongString(s) => Some((
                k.as_str().to_owned(),
                String::from_utf8_lossy(s.as_bytes()).into_owned(),
            )),
            _ => None,
        })
        .collect()
}

/// Reads an integer header of a message.
pub fn header_i64(props: &BasicProperties, key: &str) -> Option<i64> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(&ShortString::from(key))? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

/// A live message about one command on the output exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputEvent {
    /// A chunk of output; the body is the raw bytes.
    Chunk {
        /// Sequence number.
        seq: i64,
        /// Source stream.
        stream: OutputStream,
        /// Raw bytes.
        data: Bytes,
    },
    /// The command's status changed (re-read it from PostgreSQL).
    Status,
    /// The command is terminal and all its output is stored.
    End,
}

impl OutputEvent {
    /// Encodes the event as (body, headers).
    pub fn encode(&self) -> (&[u8], FieldTable) {
        let mut h = FieldTable::default();
        match self {
            OutputEvent::Chunk { seq, stream, data } => {
                h.insert(H_KIND.into(), AMQPValue::LongString("chunk".into()));
                h.insert(H_SEQ.into(), AMQPValue::LongLongInt(*seq));
                h.insert(
                    H_STREAM.into(),
                    AMQPValue::LongString(stream.as_str().into()),
                );
                (data.as_ref(), h)
            }
            OutputEvent::Status => {
                h.insert(H_KIND.into(), AMQPValue::LongString("status".into()));
                (&[], h)
            }
            OutputEvent::End => {
                h.insert(H_KIND.into(), AMQPValue::LongString("end".into()));
                (&[], h)
            }
        }
    }

    /// Decodes a delivered message; `None` for anything malformed.
    pub fn decode(props: &BasicProperties, body: Vec<u8>) -> Option<Self> {
        match header_str(props, H_KIND)? {
            b"chunk" => {
                let seq = header_i64(props, H_SEQ)?;
                let stream = match header_str(props, H_STREAM)? {
                    b"stdout" => OutputStream::Stdout,
                    b"stderr" => OutputStream::Stderr,
                    _ => return None,
                };
                Some(OutputEvent::Chunk {
                    seq,
                    stream,
                    data: Bytes::from(body),
                })
            }
            b"status" => Some(OutputEvent::Status),
            b"end" => Some(OutputEvent::End),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_events_round_trip_through_headers() {
        let events = [
            OutputEvent::Chunk {
                seq: 7,
                stream: OutputStream::Stderr,
                data: Bytes::from_static(b"\xffok"),
            },
            OutputEvent::Status,
            OutputEvent::End,
        ];
        for e in events {
            let (body, headers) = e.encode();
            let props = BasicProperties::default().with_headers(headers);
            assert_eq!(OutputEvent::decode(&props, body.to_vec()), Some(e));
        }
        assert_eq!(
            OutputEvent::decode(&BasicProperties::default(), vec![]),
            None
        );
    }
}
