//! Webhook deliveries listed and redelivered from the console.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::HeaderMap;
use rdev_tests::{Options, spawn_app_with};
use serde_json::json;

use super::{open, signed_in};

/// A webhook receiver on loopback that answers 200 and counts requests by
/// `webhook-id`.
struct Receiver {
    url: String,
    hits: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Self {
        let hits: Arc<Mutex<Vec<String>>> = Arc::default();
        let h = hits.clone();
        let app = Router::new().fallback(move |headers: HeaderMap| {
            let h = h.clone();
            async move {
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                h.lock().expect("hits").push(id);
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}/hook"),
            hits,
            task,
        }
    }

    fn hits(&self) -> Vec<String> {
        self.hits.lock().expect("hits").clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn webhook_deliveries_are_listed_and_redelivered() {
    let app = spawn_app_with(Options {
        worker: false,
        dispatcher: true,
        ..Default::default()
    })
    .await;
    let receiver = Receiver::start().await;
    let b = signed_in(&app, &app.admin_key).await;
    open(&b, "#/webhooks", "#webhook-form").await;
    b.fill("#webhook-url", &receiver.url).await;
    b.click("#webhook-create").await;
    let notice = b
        .wait_for("#webhook-secret")
        .await
        .text()
        .await
        .expect("text");
    assert!(
        notice.contains("whsec_"),
        "the secret is shown once: {notice}"
    );
    let link = "tr[data-webhook] a[href^='#/webhooks/']";
    b.wait_for(link).await;
    b.click(link).await;
    b.wait_for("#webhook-test").await;

    // A test event: one delivery with one successful attempt.
    b.click("#webhook-test").await;
    b.wait_for("tr.delivery[data-status='succeeded'][data-attempts='1']")
        .await;
    let row = b.text("tr.delivery").await;
    assert!(row.contains("webhook.test") && row.contains("200"), "{row}");
    assert_eq!(receiver.hits().len(), 1);

    // Redeliver: a second attempt of the same event.
    b.click("tr.delivery button.redeliver").await;
    b.wait_for("tr.delivery[data-status='succeeded'][data-attempts='2']")
        .await;
    let hits = receiver.hits();
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(hits[0], hits[1], "the same event id on both attempts");
    assert_eq!(
        b.js(
            "return document.querySelectorAll('tr.delivery tr.attempt').length;",
            vec![]
        )
        .await,
        json!(2)
    );
    let shot = b.screenshot("console-webhook.png").await;
    println!("screenshot of the deliveries page: {}", shot.display());
    b.close().await;
}
