//! Project secrets in the console: set, listed, deleted, never shown.

use rdev_tests::{Options, spawn_app_with};
use serde_json::json;

use super::{open, signed_in};

#[tokio::test]
async fn secrets_are_set_listed_and_deleted_and_their_values_never_shown() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    app.create_project("app", json!({})).await;
    let b = signed_in(&app, &app.admin_key).await;
    open(&b, "#/projects/app", "#secrets-link").await;
    b.click("#secrets-link").await;
    b.wait_for("#secret-form").await;
    for (value, version) in [("first-s3cr3t-value", 1), ("second-s3cr3t-value", 2)] {
        b.fill("#secret-name", "NPM_TOKEN").await;
        b.fill("#secret-value", value).await;
        b.click("#secret-set").await;
        b.wait_for(&format!(
            "tr.secret[data-name='NPM_TOKEN'][data-version='{version}']"
        ))
        .await;
    }
    let row = b.text("tr.secret").await;
    assert!(row.contains("NPM_TOKEN") && row.contains('2'), "{row}");
    // Nowhere on the page: not in its text, not in an input.
    let page = b
        .js(
            "return document.documentElement.outerHTML + '|' + \
             [...document.querySelectorAll('input')].map((i) => i.value).join('|');",
            vec![],
        )
        .await;
    assert!(!page.as_str().expect("page").contains("s3cr3t"), "{page}");
    // Too short: the API's refusal is shown, nothing is set.
    b.fill("#secret-name", "SHORT").await;
    b.fill("#secret-value", "abc").await;
    b.js(
        "document.getElementById('secret-value').removeAttribute('minlength');",
        vec![],
    )
    .await;
    b.click("#secret-set").await;
    let problem = b.wait_for("#secret-result .problem").await;
    assert!(problem.text().await.expect("text").contains("422"));
    // Delete takes two clicks.
    b.click("tr.secret[data-name='NPM_TOKEN'] button.delete")
        .await;
    b.click("tr.secret[data-name='NPM_TOKEN'] button.delete")
        .await;
    b.wait_js(
        "the row gone",
        "return !document.querySelector('tr.secret');",
        vec![],
    )
    .await;
    let listed = app.get("/v1/projects/app/secrets").await.json();
    assert_eq!(listed["items"], json!([]));
    b.close().await;

    // Without secrets:manage: no link, and the page says why.
    let (_, reader) = app
        .create_key(json!({ "name": "reader", "scopes": ["projects:read", "commands:read"] }))
        .await;
    let b = signed_in(&app, &reader).await;
    open(&b, "#/projects/app/secrets", "#secrets-denied").await;
    open(&b, "#/projects/app", "#run-form").await;
    assert_eq!(
        b.js("return !!document.getElementById('secrets-link');", vec![])
            .await,
        json!(false)
    );
    b.close().await;
}
