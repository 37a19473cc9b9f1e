//! The layering rules of docs/ARCHITECTURE.md, checked on the source tree:
//!
//! - no binary crate depends on another (only on `rdev-shared`; the CLI on
//!   no rdev crate at all), and `rdev-shared` depends on none: the arrows
//!   point one way, so a crate can be built, tested and read alone;
//! - inside `rdev-shared`, a module only uses modules below it in
//!   [`LAYERS`] (the order the architecture document lists them in).
//!
//! Dev-dependencies are free: the end-to-end tests start every binary.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// `rdev-shared`'s top-level modules, bottom-up: each may use only the
/// ones before it. A new module must be placed here (and in the code map
/// of docs/ARCHITECTURE.md).
const LAYERS: &[&str] = &[
    // Leaves: no rdev import at all.
    "config",
    "secret",
    "cache",
    "breaker",
    "redact",
    "interactive",
    "netguard",
    "lifecycle",
    "readiness",
    // Built on the leaves.
    "telemetry",
    "crypto",
    "containment",
    "domain",
    "policy",
    "ratelimit",
    "webhook",
    "webhook_sign",
    "metrics",
    // Adapters: RabbitMQ (messages and topology), PostgreSQL (whose outbox
    // stores the messages), Kubernetes (feature `kube`).
    "mq",
    "db",
    "kube",
    // Services over the adapters.
    "relay",
    // Tests only (feature `test-support`).
    "test_support",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_owned()
}

/// The `rdev-*` crates a manifest's `[dependencies]` (not dev or build)
/// names.
fn rdev_dependencies(manifest: &Path) -> Vec<String> {
    let text = fs::read_to_string(manifest).expect("manifest");
    let mut section = String::new();
    let mut found = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_owned();
            continue;
        }
        if section == "[dependencies]" && line.starts_with("rdev-") {
            let name = line.split(['=', '.', ' ']).next().unwrap_or_default();
            found.push(name.to_owned());
        }
    }
    found
}

#[test]
fn no_crate_depends_on_a_binary_crate() {
    for (krate, allowed) in [
        ("shared", &[][..]),
        ("api", &["rdev-shared"][..]),
        ("worker", &["rdev-shared"][..]),
        ("dispatcher", &["rdev-shared"][..]),
        ("cli", &[][..]),
    ] {
        let deps = rdev_dependencies(&root().join(krate).join("Cargo.toml"));
        for d in &deps {
            assert!(
                allowed.contains(&d.as_str()),
                "{krate}/Cargo.toml depends on {d}; only {allowed:?} is allowed \
                 (docs/ARCHITECTURE.md, Code map)"
            );
        }
    }
}

/// Every `.rs` file of a module: `src/<m>.rs` and everything under `src/<m>/`.
fn module_files(src: &Path, module: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let file = src.join(format!("{module}.rs"));
    if file.is_file() {
        files.push(file);
    }
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    files
}

/// The crate modules a file names as `crate::<m>`, outside comments.
fn crate_uses(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                used.insert(name);
            }
        }
        // `use crate::{a, b::c}`: the names in the braces.
        if let Some(i) = code.find("crate::{") {
            let inner = &code[i + "crate::{".len()..];
            let inner = inner.split('}').next().unwrap_or_default();
            for part in inner.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    used.insert(name);
                }
            }
        }
    }
    used
}

#[test]
fn shared_modules_only_use_modules_below_them() {
    let src = root().join("shared/src");
    // Every module declared in lib.rs is placed in LAYERS.
    let lib = fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    for line in lib.lines().map(str::trim) {
        let decl = line
            .strip_prefix("pub mod ")
            .or_else(|| line.strip_prefix("mod "));
        if let Some(name) = decl.and_then(|d| d.strip_suffix(';')) {
            assert!(
                LAYERS.contains(&name),
                "shared module `{name}` is not placed in LAYERS (shared/tests/layering.rs) \
                 and docs/ARCHITECTURE.md"
            );
        }
    }
    let mut violations = Vec::new();
    for (level, module) in LAYERS.iter().enumerate() {
        let files = module_files(&src, module);
        assert!(
            !files.is_empty(),
            "LAYERS names `{module}`, which has no file"
        );
        for file in files {
            let text = fs::read_to_string(&file).expect("source");
            for used in crate_uses(&text) {
                let Some(at) = LAYERS.iter().position(|m| *m == used) else {
                    continue; // a crate-root item (a macro, a re-export)
                };
                if at >= level && used != *module {
                    violations.push(format!(
                        "{} uses crate::{used}, which is not below `{module}`",
                        file.strip_prefix(root()).unwrap_or(&file).display()
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations (reorder LAYERS only if the architecture document agrees):\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_parser_sees_braced_and_plain_paths() {
    let uses = crate_uses(
        "use crate::{db::commands, mq};\nlet x = crate::config::parse(); // crate::relay\n",
    );
    assert_eq!(uses.into_iter().collect::<Vec<_>>(), ["config", "db", "mq"]);
}
