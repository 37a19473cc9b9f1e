//! One module per group of subcommands. Each returns the process exit code.

pub mod admin;
pub mod files;
pub mod inspect;
pub mod projects;
pub mod run;
pub mod secrets;

use crate::args::PageArgs;

/// `limit`/`cursor` query pairs.
pub(crate) fn page_query(page: &PageArgs) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    if let Some(l) = page.limit {
        q.push(("limit", l.to_string()));
    }
    if let Some(c) = &page.cursor {
        q.push(("cursor", c.clone()));
    }
    q
}
