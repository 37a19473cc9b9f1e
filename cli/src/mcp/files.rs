//! The file tools: write, read (a range) and list a project's files
//! through `/v1/projects/{name}/files`.

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock as Content};
use rmcp::{tool, tool_router};

use super::params::{ListFilesParams, ReadFileParams, WriteFileParams};
use super::{RdevMcp, failed, ok};
use crate::client::ClientError;
use crate::units::seg;

/// `/v1/projects/{project}/files[/{path}]`, each segment escaped.
fn files_path(project: &str, path: &str) -> String {
    let inner: Vec<String> = path.split('/').filter(|p| !p.is_empty()).map(seg).collect();
    if inner.is_empty() {
        format!("/v1/projects/{}/files", seg(project))
    } else {
        format!("/v1/projects/{}/files/{}", seg(project), inner.join("/"))
    }
}

#[tool_router(router = file_tools, vis = "pub(super)")]
impl RdevMcp {
    #[tool(
        description = "Write a file in a project's directory (no shell escaping: any \
        content, binary as base64). Missing directories are created; an existing file is \
        replaced whole, atomically. Local projects only."
    )]
    async fn write_file(&self, Parameters(p): Parameters<WriteFileParams>) -> CallToolResult {
        let project = match self.project(p.project.clone()) {
            Ok(pr) => pr,
            Err(e) => return e,
        };
        let bytes = if p.base64 {
            use base64::Engine;
            match base64::engine::general_purpose::STANDARD.decode(p.content.trim()) {
                Ok(b) => b,
                Err(e) => {
                    return CallToolResult::error(vec![Content::text(format!(
                        "content is not valid base64: {e}"
                    ))]);
                }
            }
        } else {
            p.content.into_bytes()
        };
        let n = bytes.len();
        let req = self
            .client
            .request(reqwest::Method::PUT, &files_path(&project, &p.path))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes);
        match self.client.send_json(req).await {
            Ok(_) => ok(format!("wrote {n} bytes to {project}:{}", p.path)),
            Err(e) => failed(&e),
        }
    }

    #[tool(
        description = "Read a file of a project's directory: up to max_bytes (64 KiB by \
        default) from offset, as text, or as base64 when it is not UTF-8. Says the file's \
        size so you can read the rest."
    )]
    async fn read_file(&self, Parameters(p): Parameters<ReadFileParams>) -> CallToolResult {
        let project = match self.project(p.project.clone()) {
            Ok(pr) => pr,
            Err(e) => return e,
        };
        let offset = p.offset.unwrap_or(0);
        let max = p.max_bytes.unwrap_or(64 * 1024).clamp(1, 1024 * 1024);
        let req = self
            .client
            .request(reqwest::Method::GET, &files_path(&project, &p.path))
            .header(
                reqwest::header::RANGE,
                format!("bytes={offset}-{}", offset + max - 1),
            );
        let resp = match self.client.send(req).await {
            Ok(r) => r,
            Err(ClientError::Api { status: 416, .. }) => {
                return ok(format!(
                    "{project}:{} has no bytes at offset {offset}",
                    p.path
                ));
            }
            Err(e) => return failed(&e),
        };
        let range = resp
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return failed(&self.client.transport(e)),
        };
        let about = match range {
            Some(r) => format!("{project}:{} ({r})", p.path),
            None => format!("{project}:{} ({} bytes)", p.path, body.len()),
        };
        match std::str::from_utf8(&body) {
            Ok(text) => ok(format!("{about}\n{text}")),
            Err(_) => {
                use base64::Engine;
                ok(format!(
                    "{about}, not UTF-8; base64:\n{}",
                    base64::engine::general_purpose::STANDARD.encode(&body)
                ))
            }
        }
    }

    #[tool(
        description = "List a directory of a project (default: the project directory): \
        name, type (file, dir, symlink, special) and size of each entry."
    )]
    async fn list_files(&self, Parameters(p): Parameters<ListFilesParams>) -> CallToolResult {
        let project = match self.project(p.project.clone()) {
            Ok(pr) => pr,
            Err(e) => return e,
        };
        let dir = p.path.unwrap_or_default();
        let mut q = vec![("list", String::new()), ("limit", "200".to_owned())];
        if let Some(c) = p.cursor {
            q.push(("cursor", c));
        }
        let page = match self.client.get(&files_path(&project, &dir), &q).await {
            Ok(v) => v,
            Err(e) => return failed(&e),
        };
        let mut s = String::new();
        for e in page["items"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap_or("?");
            let kind = e["type"].as_str().unwrap_or("?");
            let slash = if kind == "dir" { "/" } else { "" };
            s.push_str(&format!("{name}{slash} {kind} {}\n", e["size"]));
        }
        if s.is_empty() {
            s.push_str("empty directory\n");
        }
        if let Some(c) = page["next_cursor"].as_str() {
            s.push_str(&format!("more: list_files cursor={c}\n"));
        }
        ok(s)
    }
}
