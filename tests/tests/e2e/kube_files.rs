//! The files API of Kubernetes projects, through the fake Kubernetes API
//! server of the worker's tests (`worker/tests/support/fake_kube.rs`): it
//! runs each exec'd script locally, so the scripts really read and write a
//! temporary directory standing for the pod's workdir. Byte-exact round
//! trips (binary, empty, spaces and UTF-8 in names), ranges, listings,
//! deletes, archives up and down, and confinement (`..`, absolute paths,
//! symlinks, special files) without writing anything.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::json;

use rdev_tests::{Resp, TestApp, spawn_app};

use crate::files::enc;

#[path = "../../../worker/tests/support/fake_kube.rs"]
#[allow(dead_code, unused_imports)]
mod fake_kube;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp(tag: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("rdev-kube-{tag}-{:016x}", rand_u64()));
    std::fs::create_dir_all(&d).expect("temp dir");
    TempDir(d)
}

fn rand_u64() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (t as u64) ^ u64::from(std::process::id()).rotate_left(32)
}

/// An app whose API reaches the fake through a kubeconfig, with project
/// `pod` (workdir: a temporary directory) on it.
async fn app_with_pods(protocol: &'static str) -> (TestApp, fake_kube::Fake, TempDir, TempDir) {
    let fake = fake_kube::Fake::start(protocol).await;
    let conf = temp("conf");
    let kubeconfig = conf.0.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            fake.addr
        ),
    )
    .expect("kubeconfig");
    let mut app = spawn_app().await;
    app.api_cfg.kubeconfig = Some(kubeconfig);
    app.base = app.spawn_api().await;
    let workdir = temp("pod");
    app.create_project(
        "pod",
        json!({"executor": {
            "kind": "kubernetes",
            "namespace": fake_kube::NS,
            "selector": fake_kube::SELECTOR,
            "container": "app",
            "workdir": workdir.0.to_str().expect("utf-8 temp dir"),
        }}),
    )
    .await;
    (app, fake, workdir, conf)
}

async fn put(app: &TestApp, path: &str, body: Vec<u8>) -> Resp {
    app.send(
        app.http
            .put(app.url(&format!("/v1/projects/pod/files/{}", enc(path))))
            .bearer_auth(&app.admin_key)
            .body(body),
    )
    .await
}

async fn get(app: &TestApp, path: &str, range: Option<&str>) -> Resp {
    let mut req = app
        .http
        .get(app.url(&format!("/v1/projects/pod/files/{}", enc(path))))
        .bearer_auth(&app.admin_key);
    if let Some(r) = range {
        req = req.header("range", r);
    }
    app.send(req).await
}

fn names(page: &serde_json::Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["name"].as_str().expect("name").to_owned())
        .collect()
}

fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            out.push(
                p.strip_prefix(root)
                    .expect("prefix")
                    .to_string_lossy()
                    .into_owned(),
            );
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn pod_files_round_trip_byte_exact_with_ranges_listings_and_deletes() {
    for protocol in ["v4.channel.k8s.io", "v5.channel.k8s.io"] {
        let (app, fake, workdir, _conf) = app_with_pods(protocol).await;
        let binary: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let odd = "dir with space/ünï cödé ✓.txt";
        for (path, body) in [
            ("bin/data.bin", binary.clone()),
            ("empty", Vec::new()),
            (odd, b"hello\n".to_vec()),
            ("-n", b"not an option\n".to_vec()),
        ] {
            let r = put(&app, path, body.clone()).await;
            assert_eq!(
                r.status,
                201,
                "{protocol} {path}: {}",
                String::from_utf8_lossy(&r.body)
            );
            assert_eq!(r.json()["size"], body.len(), "{path}");
            assert_eq!(
                std::fs::read(workdir.0.join(path)).expect("in the pod"),
                body
            );
            let g = get(&app, path, None).await;
            assert_eq!(g.status, 200, "{path}");
            assert_eq!(g.body.as_ref(), body.as_slice(), "{protocol} {path}");
            assert_eq!(g.header("content-length"), Some(body.len().to_string()));
        }
        // Without a Content-Length (staged, then sent with its size).
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            vec![Ok(binary[..1000].to_vec()), Ok(binary[1000..].to_vec())];
        let r = app
            .send(
                app.http
                    .put(app.url("/v1/projects/pod/files/chunked.bin"))
                    .bearer_auth(&app.admin_key)
                    .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks))),
            )
            .await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            std::fs::read(workdir.0.join("chunked.bin")).expect("chunked"),
            binary
        );
        // HEAD: the size, no body.
        let h = app
            .send(
                app.http
                    .head(app.url("/v1/projects/pod/files/bin/data.bin"))
                    .bearer_auth(&app.admin_key),
            )
            .await;
        assert_eq!(h.status, 200);
        assert_eq!(h.header("content-length").as_deref(), Some("300000"));
        // Ranges.
        let r = get(&app, "bin/data.bin", Some("bytes=100-199")).await;
        assert_eq!(r.status, 206);
        assert_eq!(r.body.as_ref(), &binary[100..200]);
        assert_eq!(
            r.header("content-range").as_deref(),
            Some("bytes 100-199/300000")
        );
        let r = get(&app, "bin/data.bin", Some("bytes=-10")).await;
        assert_eq!(r.body.as_ref(), &binary[299_990..]);
        get(&app, "bin/data.bin", Some("bytes=300000-"))
            .await
            .assert_problem(416);
        // Listings, by name, paginated.
        let root = app.get("/v1/projects/pod/files?list").await.json();
        assert_eq!(
            names(&root),
            ["-n", "bin", "chunked.bin", "dir with space", "empty"]
        );
        let dir = &root["items"][1];
        assert_eq!(
            (dir["type"].as_str(), dir["mode"].as_str()),
            (Some("dir"), Some("755"))
        );
        let page = app.get("/v1/projects/pod/files?list&limit=2").await.json();
        assert_eq!(names(&page), ["-n", "bin"]);
        let cursor = page["next_cursor"].as_str().expect("cursor");
        let next = app
            .get(&format!(
                "/v1/projects/pod/files?list&limit=2&cursor={cursor}"
            ))
            .await
            .json();
        assert_eq!(names(&next), ["chunked.bin", "dir with space"]);
        let sub = app
            .get(&format!(
                "/v1/projects/pod/files/{}?list",
                enc("dir with space")
            ))
            .await
            .json();
        assert_eq!(names(&sub), ["ünï cödé ✓.txt"]);
        assert_eq!(sub["items"][0]["size"], 6);
        // Errors: missing, a directory, not empty.
        get(&app, "nope", None).await.assert_problem(404);
        get(&app, "bin", None).await.assert_problem(409);
        let del = |p: &str| {
            let path = format!("/v1/projects/pod/files/{}", enc(p));
            let app = &app;
            async move {
                app.request(reqwest::Method::DELETE, &path, Some(&app.admin_key), None)
                    .await
            }
        };
        del("bin").await.assert_problem(409);
        assert_eq!(del("bin/data.bin").await.status, 204);
        assert_eq!(del("bin").await.status, 204);
        del("bin").await.assert_problem(404);
        assert!(!workdir.0.join("bin").exists());
        assert!(
            fake.wait_sessions_closed().await,
            "{protocol}: sessions end"
        );
    }
}

#[tokio::test]
async fn pod_paths_through_symlinks_or_special_files_are_refused_without_writing() {
    let (app, fake, workdir, _conf) = app_with_pods("v5.channel.k8s.io").await;
    let outside = temp("outside");
    std::fs::write(outside.0.join("secret.txt"), b"secret").expect("secret");
    std::os::unix::fs::symlink(&outside.0, workdir.0.join("link")).expect("symlink");
    std::os::unix::fs::symlink(outside.0.join("secret.txt"), workdir.0.join("leak"))
        .expect("symlink");
    nix::unistd::mkfifo(
        &workdir.0.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .expect("fifo");
    for path in ["link/secret.txt", "leak"] {
        get(&app, path, None).await.assert_problem(422);
    }
    get(&app, "fifo", None).await.assert_problem(422);
    put(&app, "link/new.txt", b"x".to_vec())
        .await
        .assert_problem(422);
    put(&app, "leak", b"x".to_vec()).await.assert_problem(422);
    app.get("/v1/projects/pod/files/link?list")
        .await
        .assert_problem(422);
    // `..` and absolute paths never reach the pod (`%2F` keeps the client
    // from normalizing the dots away).
    let execs = fake.state.execs.lock().expect("execs").len();
    for path in [
        "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "a%2F%2e%2e%2F%2e%2e%2Fx",
        "%2Fetc%2Fpasswd",
    ] {
        app.get(&format!("/v1/projects/pod/files/{path}"))
            .await
            .assert_problem(422);
        let r = app
            .send(
                app.http
                    .put(app.url(&format!("/v1/projects/pod/files/{path}")))
                    .bearer_auth(&app.admin_key)
                    .body("evil"),
            )
            .await;
        r.assert_problem(422);
    }
    assert_eq!(fake.state.execs.lock().expect("execs").len(), execs);
    // Deleting a symlink removes the link, never its target.
    let r = app
        .request(
            reqwest::Method::DELETE,
            "/v1/projects/pod/files/leak",
            Some(&app.admin_key),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        std::fs::read(outside.0.join("secret.txt")).expect("intact"),
        b"secret"
    );
    assert_eq!(tree(&outside.0), ["secret.txt"]);
}

fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *data).expect("append");
    }
    b.into_inner().expect("tar")
}

/// A tar entry with a raw name (the `tar` builder refuses `..` itself).
fn raw_tar(name: &str, kind: tar::EntryType) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    {
        let gnu = h.as_gnu_mut().expect("gnu");
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(1);
    if kind == tar::EntryType::Symlink {
        h.set_size(0);
        h.set_link_name("/etc").expect("link");
    }
    h.set_cksum();
    let data: &[u8] = if kind == tar::EntryType::Symlink {
        b""
    } else {
        b"x"
    };
    b.append(&h, data).expect("append");
    b.into_inner().expect("tar")
}

async fn post_archive(app: &TestApp, query: &str, body: Vec<u8>) -> Resp {
    app.send(
        app.http
            .post(app.url(&format!("/v1/projects/pod/files:archive{query}")))
            .bearer_auth(&app.admin_key)
            .body(body),
    )
    .await
}

#[tokio::test]
async fn pod_archives_extract_checked_and_download_as_tar_gz() {
    let (app, _fake, workdir, _conf) = app_with_pods("v4.channel.k8s.io").await;
    let binary: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let tar = tar_of(&[
        ("src/main.rs", b"fn main() {}\n"),
        ("src/data.bin", &binary),
        ("with space/ü.txt", b""),
    ]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).expect("gz");
    let gz = gz.finish().expect("gz");
    let r = post_archive(&app, "?path=up", gz).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["files"], 3);
    assert_eq!(
        std::fs::read(workdir.0.join("up/src/data.bin")).expect("data"),
        binary
    );
    assert_eq!(
        std::fs::read(workdir.0.join("up/with space/ü.txt")).expect("empty"),
        b""
    );
    assert!(
        !tree(&workdir.0).iter().any(|p| p.contains(".rdev-")),
        "no temporary left: {:?}",
        tree(&workdir.0)
    );
    // Refused before anything is written: `..`, absolute, symlink entries.
    let before = tree(&workdir.0);
    for bad in [
        raw_tar("../escape.txt", tar::EntryType::Regular),
        raw_tar("/abs.txt", tar::EntryType::Regular),
        raw_tar("evil", tar::EntryType::Symlink),
    ] {
        post_archive(&app, "", bad).await.assert_problem(422);
    }
    // A symlink already in the pod's workdir is not followed either.
    let outside = temp("outside-archive");
    std::os::unix::fs::symlink(&outside.0, workdir.0.join("up/out")).expect("symlink");
    let r = post_archive(
        &app,
        "?path=up",
        tar_of(&[("out/x.txt", b"x"), ("fine.txt", b"y")]),
    )
    .await;
    r.assert_problem(422);
    assert!(
        tree(&outside.0).is_empty(),
        "nothing written through the link"
    );
    assert!(
        !workdir.0.join("up/fine.txt").exists(),
        "nothing written at all"
    );
    std::fs::remove_file(workdir.0.join("up/out")).expect("unlink");
    let mut after = tree(&workdir.0);
    after.retain(|p| p != "up/out");
    assert_eq!(before, after);
    // Download: directories and regular files only.
    std::os::unix::fs::symlink("/etc/passwd", workdir.0.join("up/src/link")).expect("symlink");
    let r = app
        .send(
            app.http
                .get(app.url("/v1/projects/pod/files/up:archive"))
                .bearer_auth(&app.admin_key),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/gzip")
    );
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(r.body.as_ref()));
    let mut got = Vec::new();
    for e in archive.entries().expect("entries") {
        let mut e = e.expect("entry");
        let name = e.path().expect("path").to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("data");
        if name == "src/data.bin" {
            assert_eq!(data, binary);
        }
        got.push(name);
    }
    got.sort();
    assert_eq!(
        got,
        [
            "src/",
            "src/data.bin",
            "src/main.rs",
            "with space/",
            "with space/ü.txt"
        ]
    );
    app.get("/v1/projects/pod/files/nothing:archive")
        .await
        .assert_problem(404);
}

#[tokio::test]
async fn per_project_cap_limits_uploads_to_pods() {
    let (app, _fake, workdir, _conf) = app_with_pods("v5.channel.k8s.io").await;
    let r = app
        .request(
            reqwest::Method::PATCH,
            "/v1/projects/pod",
            Some(&app.admin_key),
            Some(json!({"max_file_bytes": 1000})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["max_file_bytes"], 1000);
    put(&app, "big", vec![1u8; 1001]).await.assert_problem(413);
    assert_eq!(put(&app, "ok", vec![1u8; 1000]).await.status, 201);
    post_archive(&app, "", tar_of(&[("a", &[0u8; 600]), ("b", &[0u8; 600])]))
        .await
        .assert_problem(413);
    assert!(!workdir.0.join("a").exists() && !workdir.0.join("big").exists());
}
