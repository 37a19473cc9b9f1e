//! `rdev secrets set|ls|rm`: a project's secrets. Values go in from
//! standard input or a file, never from the command line (shell history,
//! `ps`), and never come back out.

use std::io::Read;

use serde_json::json;

use super::page_query;
use crate::args::SecretsCmd;
use crate::client::{Client, ClientError};
use crate::output::{Style, Table, field, note, print_done, print_list, print_object};
use crate::units::seg;

const FIELDS: &[&str] = &["name", "version", "set_by", "set_at", "created_at"];

/// The value as given: a file byte for byte, or standard input without one
/// trailing newline (what `echo "$X" |` and a typed line add).
pub fn value_of(raw: Vec<u8>, from_file: bool) -> Result<String, ClientError> {
    let mut raw = raw;
    if !from_file {
        if raw.ends_with(b"\r\n") {
            raw.truncate(raw.len() - 2);
        } else if raw.ends_with(b"\n") {
            raw.truncate(raw.len() - 1);
        }
    }
    String::from_utf8(raw).map_err(|_| ClientError::Usage("the value must be UTF-8 text".into()))
}

/// Runs a `secrets` subcommand.
pub async fn secrets(client: &Client, style: &Style, cmd: &SecretsCmd) -> Result<i32, ClientError> {
    match cmd {
        SecretsCmd::Set {
            project,
            name,
            from_file,
        } => {
            let raw = match from_file {
                Some(path) => std::fs::read(path).map_err(|e| {
                    ClientError::Usage(format!("cannot read {}: {e}", path.display()))
                })?,
                None => {
                    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                        note("reading the value from standard input (end with Ctrl-D)");
                    }
                    let mut buf = Vec::new();
                    std::io::stdin().read_to_end(&mut buf).map_err(|e| {
                        ClientError::Usage(format!("cannot read standard input: {e}"))
                    })?;
                    buf
                }
            };
            let value = value_of(raw, from_file.is_some())?;
            let path = format!("/v1/projects/{}/secrets/{}", seg(project), seg(name));
            let meta = client.put(&path, &json!({ "value": value })).await?;
            print_object(style, &meta, FIELDS);
        }
        SecretsCmd::Ls { project, page } => {
            let path = format!("/v1/projects/{}/secrets", seg(project));
            let answer = client.get(&path, &page_query(page)).await?;
            print_list(style, &answer, |items| {
                let mut t = Table::new(&["NAME", "VERSION", "SET_BY", "SET_AT"]);
                for s in items {
                    t.row(vec![
                        field(s, "name"),
                        field(s, "version"),
                        field(s, "set_by"),
                        field(s, "set_at"),
                    ]);
                }
                t
            });
        }
        SecretsCmd::Rm { project, name } => {
            let path = format!("/v1/projects/{}/secrets/{}", seg(project), seg(name));
            let answer = client.delete(&path).await?;
            print_done(
                style,
                &answer,
                &format!("secret {name} deleted from {project}"),
            );
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_loses_one_trailing_newline_and_files_stay_exact() {
        assert_eq!(value_of(b"abc\n".to_vec(), false).expect("v"), "abc");
        assert_eq!(value_of(b"abc\r\n".to_vec(), false).expect("v"), "abc");
        assert_eq!(value_of(b"a\nb\n\n".to_vec(), false).expect("v"), "a\nb\n");
        assert_eq!(value_of(b"key\n".to_vec(), true).expect("v"), "key\n");
        assert!(value_of(vec![0xff], true).is_err());
    }
}
