//! `rdev projects ls|create|get|delete`.

use serde_json::{Map, Value, json};

use super::page_query;
use crate::args::{ExecutorKind, ProjectCreateArgs, ProjectsCmd};
use crate::client::{Client, ClientError};
use crate::output::{Style, Table, field, print_done, print_list, print_object};
use crate::units::seg;

const PROJECT_FIELDS: &[&str] = &[
    "name",
    "description",
    "executor",
    "env_names",
    "default_timeout_s",
    "max_output_bytes",
    "max_concurrency",
    "allowed_commands",
    "created_at",
    "updated_at",
];

/// The body of `POST /v1/projects`.
pub fn create_body(a: &ProjectCreateArgs) -> Value {
    let mut executor = Map::new();
    let kind = match a.executor {
        ExecutorKind::Local => "local",
        ExecutorKind::Kubernetes => "kubernetes",
    };
    executor.insert("kind".into(), json!(kind));
    for (k, v) in [
        ("workdir", &a.workdir),
        ("namespace", &a.namespace),
        ("selector", &a.selector),
        ("container", &a.container),
    ] {
        if let Some(v) = v {
            executor.insert(k.into(), json!(v));
        }
    }
    let mut body = Map::new();
    body.insert("name".into(), json!(a.name));
    body.insert("executor".into(), Value::Object(executor));
    if let Some(d) = &a.description {
        body.insert("description".into(), json!(d));
    }
    if !a.env.is_empty() {
        let env: Map<String, Value> = a.env.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        body.insert("env".into(), Value::Object(env));
    }
    if let Some(t) = a.default_timeout {
        body.insert("default_timeout_s".into(), json!(t));
    }
    if let Some(m) = a.max_output_bytes {
        body.insert("max_output_bytes".into(), json!(m));
    }
    if let Some(m) = a.max_concurrency {
        body.insert("max_concurrency".into(), json!(m));
    }
    if !a.allowed_commands.is_empty() {
        body.insert("allowed_commands".into(), json!(a.allowed_commands));
    }
    Value::Object(body)
}

/// Runs a `projects` subcommand.
pub async fn projects(
    client: &Client,
    style: &Style,
    cmd: &ProjectsCmd,
) -> Result<i32, ClientError> {
    match cmd {
        ProjectsCmd::Ls(page) => {
            let answer = client.get("/v1/projects", &page_query(page)).await?;
            print_list(style, &answer, |items| {
                let mut t =
                    Table::new(&["NAME", "EXECUTOR", "TIMEOUT_S", "CREATED", "DESCRIPTION"]);
                for p in items {
                    let exec = p.get("executor").cloned().unwrap_or(Value::Null);
                    t.row(vec![
                        field(p, "name"),
                        field(&exec, "kind"),
                        field(p, "default_timeout_s"),
                        field(p, "created_at"),
                        field(p, "description"),
                    ]);
                }
                t
            });
        }
        ProjectsCmd::Create(a) => {
            let p = client.post("/v1/projects", &create_body(a)).await?;
            print_object(style, &p, PROJECT_FIELDS);
        }
        ProjectsCmd::Get { name } => {
            let p = client
                .get(&format!("/v1/projects/{}", seg(name)), &[])
                .await?;
            print_object(style, &p, PROJECT_FIELDS);
        }
        ProjectsCmd::Delete { name } => {
            let answer = client
                .delete(&format!("/v1/projects/{}", seg(name)))
                .await?;
            print_done(style, &answer, &format!("deleted project {name}"));
        }
    }
    Ok(0)
}
