//! `rdev cp` and `rdev ls PROJECT:DIR`: files of a project, streamed in
//! both directions (a 64 KiB buffer, whatever the file's size).

use std::path::{Path, PathBuf};

use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::page_query;
use crate::args::{CpArgs, PageArgs};
use crate::client::{Client, ClientError};
use crate::output::{Style, Table, field, note, print_list};
use crate::units::seg;

/// `PROJECT:path` → (project, path); anything else is a local path.
pub fn remote(s: &str) -> Option<(&str, &str)> {
    let (p, path) = s.split_once(':')?;
    let valid = !p.is_empty()
        && p.len() <= 63
        && p.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    valid.then_some((p, path.trim_start_matches('/')))
}

fn url(project: &str, path: &str) -> String {
    let inner: Vec<String> = path.split('/').filter(|p| !p.is_empty()).map(seg).collect();
    if inner.is_empty() {
        format!("/v1/projects/{}/files", seg(project))
    } else {
        format!("/v1/projects/{}/files/{}", seg(project), inner.join("/"))
    }
}

fn join(dir: &str, name: &str) -> String {
    let dir = dir.trim_end_matches('/');
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

fn local_err(what: &str, path: &Path, e: std::io::Error) -> ClientError {
    ClientError::Usage(format!("{what} {}: {e}", path.display()))
}

/// Runs `rdev cp SRC DST` (one side `PROJECT:path`).
pub async fn cp(client: &Client, a: &CpArgs) -> Result<i32, ClientError> {
    match (remote(&a.src), remote(&a.dst)) {
        (None, Some((project, path))) => {
            let src = PathBuf::from(&a.src);
            let meta = std::fs::metadata(&src).map_err(|e| local_err("cannot read", &src, e))?;
            let name = src
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let dest = if path.is_empty() || path.ends_with('/') {
                join(path, &name)
            } else {
                path.to_owned()
            };
            if meta.is_dir() {
                upload_dir(client, project, &src, &dest).await?;
            } else {
                upload(client, project, &src, &dest).await?;
            }
            Ok(0)
        }
        (Some((project, path)), None) => {
            let name = path.rsplit('/').find(|p| !p.is_empty()).unwrap_or(project);
            let dst = PathBuf::from(&a.dst);
            let dst = if dst.is_dir() { dst.join(name) } else { dst };
            download_any(client, project, path, &dst).await?;
            Ok(0)
        }
        _ => Err(ClientError::Usage(
            "give one local path and one PROJECT:path (e.g. `rdev cp ./dir app:dir`)".into(),
        )),
    }
}

async fn upload(client: &Client, project: &str, src: &Path, dest: &str) -> Result<(), ClientError> {
    let file = tokio::fs::File::open(src)
        .await
        .map_err(|e| local_err("cannot open", src, e))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| local_err("cannot read", src, e))?
        .len();
    let body = futures::stream::unfold(
        (file, vec![0u8; 64 * 1024]),
        |(mut f, mut buf)| async move {
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => Some((Ok(buf[..n].to_vec()), (f, buf))),
                Err(e) => Some((Err(e), (f, buf))),
            }
        },
    );
    let req = client
        .request(Method::PUT, &url(project, dest))
        .header(reqwest::header::CONTENT_LENGTH, len)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(reqwest::Body::wrap_stream(body));
    client.send(req).await?;
    note(&format!(
        "{} → {project}:{dest} ({len} bytes)",
        src.display()
    ));
    Ok(())
}

async fn upload_dir(
    client: &Client,
    project: &str,
    src: &Path,
    dest: &str,
) -> Result<(), ClientError> {
    let mut stack = vec![(src.to_path_buf(), dest.to_owned())];
    while let Some((dir, remote_dir)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| local_err("cannot read", &dir, e))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for e in entries {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let ft = e
                .file_type()
                .map_err(|err| local_err("cannot read", &path, err))?;
            if ft.is_dir() {
                stack.push((path, join(&remote_dir, &name)));
            } else if ft.is_file() {
                upload(client, project, &path, &join(&remote_dir, &name)).await?;
            } else {
                note(&format!("skipping {} (not a regular file)", path.display()));
            }
        }
    }
    Ok(())
}

/// Downloads a file, or a directory recursively (through `?list`).
async fn download_any(
    client: &Client,
    project: &str,
    path: &str,
    dst: &Path,
) -> Result<(), ClientError> {
    match download(client, project, path, dst).await {
        Err(ClientError::Api { status: 409, .. }) => {
            let mut stack = vec![(path.to_owned(), dst.to_path_buf())];
            while let Some((rdir, ldir)) = stack.pop() {
                std::fs::create_dir_all(&ldir).map_err(|e| local_err("cannot create", &ldir, e))?;
                let mut cursor: Option<String> = None;
                loop {
                    let mut q = vec![("list", String::new()), ("limit", "200".to_owned())];
                    if let Some(c) = &cursor {
                        q.push(("cursor", c.clone()));
                    }
                    let page = client.get(&url(project, &rdir), &q).await?;
                    for e in page["items"].as_array().into_iter().flatten() {
                        let name = e["name"].as_str().unwrap_or_default();
                        match e["type"].as_str() {
                            Some("dir") => stack.push((join(&rdir, name), ldir.join(name))),
                            Some("file") => {
                                download(client, project, &join(&rdir, name), &ldir.join(name))
                                    .await?;
                            }
                            _ => note(&format!(
                                "skipping {project}:{} (not a regular file)",
                                join(&rdir, name)
                            )),
                        }
                    }
                    cursor = page["next_cursor"].as_str().map(str::to_owned);
                    if cursor.is_none() {
                        break;
                    }
                }
            }
            Ok(())
        }
        other => other,
    }
}

async fn download(
    client: &Client,
    project: &str,
    path: &str,
    dst: &Path,
) -> Result<(), ClientError> {
    let resp = client
        .send(client.request(Method::GET, &url(project, path)))
        .await?;
    let tmp = dst.with_extension("rdev-part");
    let mut out = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| local_err("cannot create", &tmp, e))?;
    let mut stream = resp.bytes_stream();
    let mut n: u64 = 0;
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| client.transport(e))?;
        n += piece.len() as u64;
        out.write_all(&piece)
            .await
            .map_err(|e| local_err("cannot write", &tmp, e))?;
    }
    out.flush()
        .await
        .map_err(|e| local_err("cannot write", &tmp, e))?;
    drop(out);
    std::fs::rename(&tmp, dst).map_err(|e| local_err("cannot write", dst, e))?;
    note(&format!("{project}:{path} → {} ({n} bytes)", dst.display()));
    Ok(())
}

/// `rdev ls PROJECT:DIR`.
pub async fn ls(
    client: &Client,
    style: &Style,
    project: &str,
    path: &str,
    page: &PageArgs,
) -> Result<i32, ClientError> {
    let mut q = page_query(page);
    q.push(("list", String::new()));
    let answer: Value = client.get(&url(project, path), &q).await?;
    print_list(style, &answer, |items| {
        let mut t = Table::new(&["NAME", "TYPE", "SIZE", "MODE", "MTIME"]);
        for e in items {
            t.row(vec![
                field(e, "name"),
                field(e, "type"),
                field(e, "size"),
                field(e, "mode"),
                field(e, "mtime"),
            ]);
        }
        t
    });
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths_name_a_project() {
        assert_eq!(remote("app:dir/x"), Some(("app", "dir/x")));
        assert_eq!(remote("app:"), Some(("app", "")));
        assert_eq!(remote("my-app:/abs"), Some(("my-app", "abs")));
        assert_eq!(remote("./app:x"), None);
        assert_eq!(remote("C:x"), None);
        assert_eq!(remote("plain"), None);
        assert_eq!(url("app", "a b/ü"), "/v1/projects/app/files/a%20b/%C3%BC");
        assert_eq!(url("app", ""), "/v1/projects/app/files");
    }
}
