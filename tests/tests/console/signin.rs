//! Signing in, a refusal, and what a read-only key is shown.

use std::time::Duration;

use rdev_tests::{Options, spawn_app_with};
use serde_json::{Value, json};

use super::{CSP, open, signed_in, wait_page_status};

#[tokio::test]
async fn sign_in_create_a_project_and_read_a_refusal() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;

    // The page and its files carry the policy.
    for path in ["/ui", "/ui/app.js", "/ui/app.css"] {
        let r = app.send(app.http.get(app.url(path))).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-security-policy").as_deref(), Some(CSP));
        assert_eq!(
            r.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
        assert_eq!(r.header("referrer-policy").as_deref(), Some("no-referrer"));
    }

    let b = signed_in(&app, &app.admin_key).await;
    assert!(b.text("#who-name").await.contains("test-admin"));
    // The key is in this tab's sessionStorage only, never in the URL.
    let url = b.client.current_url().await.expect("url").to_string();
    assert!(!url.contains(&app.admin_key), "{url}");
    let stored = b
        .js(
            "return [sessionStorage.getItem('rdev.key'), localStorage.length, document.cookie];",
            vec![],
        )
        .await;
    assert_eq!(stored, json!([app.admin_key, 0, ""]));

    // Create a project with the form.
    b.wait_for("#project-form").await;
    b.fill("#project-name", "web").await;
    b.fill("#project-description", "the web app").await;
    b.click("#project-create").await;
    b.wait_for("tr[data-project='web']").await;
    let p = app.get("/v1/projects/web").await;
    assert_eq!(p.status, 200);
    assert_eq!(p.json()["description"], "the web app");

    // A refused request is explained: problem+json title, detail and fields.
    b.fill("#project-name", "Not A Slug").await;
    b.click("#project-create").await;
    let problem = b.wait_for(".problem").await.text().await.expect("text");
    assert!(problem.contains("Validation Failed (422)"), "{problem}");
    assert!(problem.contains("must match"), "{problem}");
    assert!(problem.contains("name"), "{problem}");
    // The same name twice: a conflict, said in words.
    b.fill("#project-name", "web").await;
    b.click("#project-create").await;
    b.wait_js(
        "a 409 explanation",
        "const p = document.querySelector('.problem'); return !!p && p.textContent.includes('(409)');",
        vec![],
    )
    .await;

    // The scripts ran from 'self' (the page works) without any policy
    // violation; and the policy is enforced: an injected inline script does
    // not run, and that is reported.
    let before = b.console_messages().await;
    assert!(
        !before
            .iter()
            .any(|m| m.contains("Content Security Policy") || m.contains("CSP")),
        "{before:#?}"
    );
    let ran = b
        .js(
            "const s = document.createElement('script'); s.textContent = 'window.inlineRan = true;'; \
             document.head.appendChild(s); return window.inlineRan === true;",
            vec![],
        )
        .await;
    assert_eq!(ran, json!(false), "inline script must be blocked");
    let after = b.console_messages().await;
    assert!(
        after.iter().any(|m| m.contains("Content Security Policy")),
        "the blocked script is reported: {after:#?}"
    );

    // Signing out forgets the key.
    b.click("#sign-out").await;
    b.wait_for("#signin-key").await;
    let key = b
        .js("return sessionStorage.getItem('rdev.key');", vec![])
        .await;
    assert_eq!(key, Value::Null);
    b.close().await;
}

#[tokio::test]
async fn a_read_only_key_sees_disabled_buttons_that_say_why() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    app.create_project("demo", json!({})).await;
    // No worker: the command stays queued, so cancelling would be possible.
    let id = app.run("demo", json!({ "command": "true" })).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (_, reader) = app
        .create_key(json!({
            "name": "reader",
            "scopes": ["projects:read", "commands:read", "audit:read"],
        }))
        .await;
    let b = signed_in(&app, &reader).await;

    let disabled = |css: &'static str| {
        let b = &b;
        async move {
            let e = b.wait_for(css).await;
            assert!(
                !e.is_enabled().await.expect("enabled?"),
                "{css} is disabled"
            );
            e.attr("title").await.expect("title").unwrap_or_default()
        }
    };
    b.wait_for("tr[data-project='demo']").await;
    let why = disabled("#project-create").await;
    assert!(why.contains("projects:write"), "{why}");

    open(&b, "#/projects/demo", &format!("tr[data-command='{id}']")).await;
    let why = disabled("#run-submit").await;
    assert!(why.contains("commands:run"), "{why}");
    let shot = b.screenshot("console-read-only.png").await;
    println!(
        "screenshot of a project page with a read-only key: {}",
        shot.display()
    );

    open(&b, &format!("#/commands/{id}"), "#output").await;
    wait_page_status(&b, "queued").await;
    let why = disabled("#cancel").await;
    assert!(why.contains("commands:run"), "{why}");
    // Clicking it does nothing.
    let _ = b.find("#cancel").await.click().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.get(&format!("/v1/commands/{id}")).await.json()["status"],
        "queued"
    );

    // Webhooks need webhooks:manage even to read: the refusal is explained.
    open(&b, "#/webhooks", "#webhook-form").await;
    let problem = b.wait_for(".problem").await.text().await.expect("text");
    assert!(
        problem.contains("Forbidden (403)") && problem.contains("webhooks:manage"),
        "{problem}"
    );
    let why = disabled("#webhook-create").await;
    assert!(why.contains("webhooks:manage"), "{why}");

    // The audit log is readable, and filters.
    open(&b, "#/audit", "#audit-form").await;
    b.wait_for("tr.audit-entry").await;
    b.fill("#audit-action", "project.create").await;
    b.click("#audit-apply").await;
    b.wait_js(
        "only project.create entries",
        "const rows = [...document.querySelectorAll('tr.audit-entry')]; \
         return rows.length > 0 && rows.every(r => r.textContent.includes('project.create'));",
        vec![],
    )
    .await;
    assert!(
        b.client
            .current_url()
            .await
            .expect("url")
            .fragment()
            .is_some_and(|f| f.contains("action=project.create")),
        "filters are kept in the URL's fragment"
    );
    b.close().await;
}
