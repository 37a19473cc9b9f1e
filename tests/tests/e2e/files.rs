//! The files API of local projects: byte-exact round trips (binary, empty,
//! names with spaces and UTF-8), ranges, listings, deletes, scopes,
//! confinement (`..`, absolute paths, symlinks and FIFOs planted by a
//! command). The large transfer with bounded memory is `tests/files_memory.rs`
//! (its own binary: it measures the process's memory, which tests running
//! beside it would disturb).

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use rdev_tests::{Resp, TestApp, spawn_app};

const WAIT: Duration = Duration::from_secs(60);

async fn put(app: &TestApp, key: &str, path: &str, body: Vec<u8>) -> Resp {
    app.send(
        app.http
            .put(app.url(&format!("/v1/projects/app/files/{path}")))
            .bearer_auth(key)
            .body(body),
    )
    .await
}

async fn get(app: &TestApp, path: &str, range: Option<&str>) -> Resp {
    let mut req = app
        .http
        .get(app.url(&format!("/v1/projects/app/files/{path}")))
        .bearer_auth(&app.admin_key);
    if let Some(r) = range {
        req = req.header("range", r);
    }
    app.send(req).await
}

async fn sh(app: &TestApp, line: &str) -> String {
    let c = app.run("app", json!({ "command": line })).await;
    let id = c["id"].as_str().expect("id").to_owned();
    let done = app.wait_terminal(&id, WAIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    String::from_utf8_lossy(&app.output(&id, None).await).into_owned()
}

/// Percent-encodes each segment of a relative path (slashes stay).
pub(crate) fn enc(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            seg.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn files_round_trip_byte_exact_with_ranges_listings_and_deletes() {
    let app = spawn_app().await;
    app.create_project("app", json!({})).await;
    let admin = app.admin_key.clone();
    let binary: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let odd = "dir with space/ünï cödé ✓.txt";
    for (path, body) in [
        ("bin/data.bin", binary.clone()),
        ("empty", Vec::new()),
        (odd, b"hello\n".to_vec()),
    ] {
        let r = put(&app, &admin, &enc(path), body.clone()).await;
        assert_eq!(
            r.status,
            201,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["size"], body.len(), "{path}");
        let g = get(&app, &enc(path), None).await;
        assert_eq!(g.status, 200, "{path}");
        assert_eq!(g.body.as_ref(), body.as_slice(), "{path}");
        assert_eq!(g.header("content-length"), Some(body.len().to_string()));
    }
    // HEAD: the size, no body.
    let h = app
        .send(
            app.http
                .head(app.url("/v1/projects/app/files/bin/data.bin"))
                .bearer_auth(&admin),
        )
        .await;
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-length").as_deref(), Some("70000"));
    assert!(h.body.is_empty());
    // Ranges.
    let r = get(&app, "bin/data.bin", Some("bytes=100-199")).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body.as_ref(), &binary[100..200]);
    assert_eq!(
        r.header("content-range").as_deref(),
        Some("bytes 100-199/70000")
    );
    let r = get(&app, "bin/data.bin", Some("bytes=-10")).await;
    assert_eq!(r.body.as_ref(), &binary[69_990..]);
    let r = get(&app, "bin/data.bin", Some("bytes=70000-")).await;
    r.assert_problem(416);
    assert_eq!(r.header("content-range").as_deref(), Some("bytes */70000"));

    // Commands see uploads, and their files can be downloaded: one volume.
    let out = sh(&app, "wc -c < bin/data.bin; echo made > out.log").await;
    assert_eq!(out.trim(), "70000");
    assert_eq!(get(&app, "out.log", None).await.body.as_ref(), b"made\n");

    // Listings, paginated by name.
    let root = app.get("/v1/projects/app/files?list").await.json();
    let names: Vec<&str> = root["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        ["bin", "dir with space", "empty", "out.log"],
        "{root}"
    );
    let page = app.get("/v1/projects/app/files?list&limit=2").await.json();
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    let next = page["next_cursor"].as_str().expect("cursor").to_owned();
    let page2 = app
        .get(&format!(
            "/v1/projects/app/files?list&limit=2&cursor={next}"
        ))
        .await
        .json();
    assert_eq!(page2["items"][0]["name"], "empty", "{page2}");
    let bin = app.get("/v1/projects/app/files/bin?list").await.json();
    assert_eq!(bin["items"][0]["name"], "data.bin");
    assert_eq!(bin["items"][0]["type"], "file");
    assert_eq!(bin["items"][0]["size"], 70000);
    assert!(bin["items"][0]["mtime"].is_string());

    // Deletes: a file, then its now empty directory; a full one is 409.
    let del = |path: &'static str| {
        let app = &app;
        async move {
            app.request(
                Method::DELETE,
                &format!("/v1/projects/app/files/{path}"),
                Some(&app.admin_key.clone()),
                None,
            )
            .await
        }
    };
    del("bin").await.assert_problem(409);
    assert_eq!(del("bin/data.bin").await.status, 204);
    assert_eq!(del("bin").await.status, 204);
    get(&app, "bin/data.bin", None).await.assert_problem(404);

    // Scopes: files:read reads, only files:write writes.
    let (_, reader) = app
        .create_key(json!({"name": "reader", "scopes": ["files:read"]}))
        .await;
    put(&app, &reader, "x", b"x".to_vec())
        .await
        .assert_problem(403);
    let r = app
        .request(
            Method::GET,
            "/v1/projects/app/files/out.log",
            Some(&reader),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    // Audit of writes.
    let audit = app.get("/v1/audit?action=file.write").await.json();
    assert_eq!(audit["items"].as_array().map(Vec::len), Some(3), "{audit}");
}

#[tokio::test]
async fn paths_leaving_the_project_are_refused_without_writing_anything() {
    let app = spawn_app().await;
    app.create_project("app", json!({})).await;
    let outside = std::env::temp_dir().join(format!("rdev-outside-{}", rand_suffix()));
    std::fs::create_dir_all(&outside).expect("outside");
    std::fs::write(outside.join("secret.txt"), b"outside").expect("write");
    // A command plants symlinks to outside and a FIFO.
    sh(
        &app,
        &format!(
            "ln -s {o} out; ln -s {o}/secret.txt leak; ln -s .. up; mkfifo fifo; echo ok",
            o = outside.display()
        ),
    )
    .await;
    let admin = app.admin_key.clone();
    for path in ["out/secret.txt", "leak", "up/app/leak", "fifo"] {
        let r = get(&app, path, None).await;
        assert_eq!(
            r.status,
            422,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    for path in ["out/new.txt", "leak", "up/x"] {
        let r = put(&app, &admin, path, b"evil".to_vec()).await;
        assert!(
            r.status == 422 || r.status == 409,
            "{path}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    // `..` and absolute paths, however spelled in the URL.
    // (`%2F` keeps the client from normalizing the dots away; the server
    // decodes the path and sees `..` or a leading `/`.)
    for path in [
        "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "a%2F%2e%2e%2F%2e%2e%2Fx",
        "%2Fetc%2Fpasswd",
    ] {
        let r = get(&app, path, None).await;
        assert_eq!(
            r.status,
            422,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let r = put(&app, &admin, path, b"evil".to_vec()).await;
        assert_eq!(r.status, 422, "{path}");
    }
    assert_eq!(
        std::fs::read(outside.join("secret.txt")).expect("read"),
        b"outside"
    );
    let left: Vec<_> = std::fs::read_dir(&outside)
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    // The symlink itself can be listed and deleted (not its target).
    let list = app.get("/v1/projects/app/files?list").await.json();
    assert!(
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|e| e["name"] == "leak" && e["type"] == "symlink"),
        "{list}"
    );
    let r = app
        .request(
            Method::DELETE,
            "/v1/projects/app/files/leak",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    assert!(outside.join("secret.txt").exists());
    let _ = std::fs::remove_dir_all(&outside);
}

fn rand_suffix() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

/// A tar entry with a raw name (the `tar` builder refuses `..` itself).
fn raw_entry(b: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    {
        let gnu = h.as_gnu_mut().expect("gnu");
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    if kind == tar::EntryType::Symlink {
        h.set_link_name("/etc").expect("link");
    }
    h.set_cksum();
    b.append(&h, data).expect("append");
}

async fn post_archive(app: &TestApp, query: &str, body: Vec<u8>) -> Resp {
    app.send(
        app.http
            .post(app.url(&format!("/v1/projects/app/files:archive{query}")))
            .bearer_auth(&app.admin_key)
            .body(body),
    )
    .await
}

#[tokio::test]
async fn archives_extract_checked_and_download_as_tar_gz() {
    let app = spawn_app().await;
    app.create_project("app", json!({})).await;
    let binary: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, name, data).expect("append");
    };
    add("./src/main.bin", &binary);
    add("src/with space ü.txt", b"text\n");
    add("empty", b"");
    let tar_bytes = b.into_inner().expect("tar");
    // Plain tar into a subdirectory, then the same as tar.gz at the root.
    let r = post_archive(&app, "?path=in", tar_bytes.clone()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["files"], 3);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar_bytes).expect("gz");
    let r = post_archive(&app, "", gz.finish().expect("gz")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        get(&app, "in/src/main.bin", None).await.body.as_ref(),
        binary.as_slice()
    );
    assert_eq!(
        get(&app, "src/main.bin", None).await.body.as_ref(),
        binary.as_slice()
    );
    assert_eq!(
        get(&app, &enc("src/with space ü.txt"), None)
            .await
            .body
            .as_ref(),
        b"text\n"
    );
    // Executable bits survive (the command can run it).
    let out = sh(&app, "test -x src/main.bin && echo exec").await;
    assert_eq!(out.trim(), "exec");

    // Escapes and links refuse the whole archive; nothing is written.
    let before = app.get("/v1/projects/app/files?list").await.body;
    let regular = tar::EntryType::Regular;
    let cases: Vec<(Vec<(&str, tar::EntryType)>, &str)> = vec![
        (
            vec![("ok-first.txt", regular), ("../evil.txt", regular)],
            "`..`",
        ),
        (
            vec![("ok-first.txt", regular), ("/tmp/evil.txt", regular)],
            "relative",
        ),
        (
            vec![("ok-first.txt", regular), ("a/../../evil", regular)],
            "`..`",
        ),
        (
            vec![("link", tar::EntryType::Symlink), ("link/evil", regular)],
            "Symlink",
        ),
        (
            vec![("ok-first.txt", regular), ("hard", tar::EntryType::Link)],
            "Link",
        ),
        (
            vec![("ok-first.txt", regular), ("fifo", tar::EntryType::Fifo)],
            "Fifo",
        ),
    ];
    for (entries, why) in cases {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind) in &entries {
            let data: &[u8] = if *kind == regular { b"evil" } else { b"" };
            raw_entry(&mut b, name, *kind, data);
        }
        let p = post_archive(&app, "", b.into_inner().expect("tar"))
            .await
            .assert_problem(422);
        assert!(
            p["detail"].as_str().unwrap_or("").contains(why),
            "{entries:?}: {p}"
        );
        assert_eq!(
            app.get("/v1/projects/app/files?list").await.body,
            before,
            "{entries:?}"
        );
    }
    assert!(!std::path::Path::new("/tmp/evil.txt").exists());
    assert!(!app.workspace.join("evil.txt").exists());
    post_archive(&app, "", b"not a tar at all".repeat(100))
        .await
        .assert_problem(422);

    // Download: the tree as tar.gz, byte-exact.
    let r = app
        .send(
            app.http
                .get(app.url("/v1/projects/app/files/in:archive"))
                .bearer_auth(&app.admin_key),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/gzip")
    );
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&r.body[..]));
    let mut got = std::collections::BTreeMap::new();
    for e in archive.entries().expect("entries") {
        let mut e = e.expect("entry");
        let name = e.path().expect("path").display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).expect("read");
        got.insert(name, data);
    }
    assert_eq!(got.get("src/main.bin"), Some(&binary), "{:?}", got.keys());
    assert_eq!(
        got.get("src/with space ü.txt").map(Vec::as_slice),
        Some(&b"text\n"[..])
    );
    assert_eq!(got.get("empty").map(Vec::len), Some(0));
    let root = app
        .send(
            app.http
                .get(app.url("/v1/projects/app/files:archive"))
                .bearer_auth(&app.admin_key),
        )
        .await;
    assert_eq!(root.status, 200);
    app.get("/v1/projects/app/files/nope:archive")
        .await
        .assert_problem(404);
}

#[tokio::test]
async fn files_uploaded_before_the_first_command_are_the_commands_to_change() {
    let app = spawn_app().await;
    app.create_project("app", json!({})).await;
    let admin = app.admin_key.clone();
    // The project directory does not exist yet: the upload creates it.
    assert_eq!(
        put(&app, &admin, "d/f.txt", b"one\n".to_vec()).await.status,
        201
    );
    let out = sh(
        &app,
        "echo two >> d/f.txt && echo new > d/g.txt && rm d/f.txt.bak 2>/dev/null; cat d/f.txt d/g.txt",
    )
    .await;
    assert_eq!(out, "one\ntwo\nnew\n");
}
