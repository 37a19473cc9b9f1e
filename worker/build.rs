//! Builds the small `rdev-sandbox-init` (small/main.rs), which the worker
//! carries in its binary (src/sandbox/small.rs): `core` only, aborting on
//! panic, static, no C start files, so it starts without a dynamic loader
//! or the C library's set-up. Only for x86_64 Linux; elsewhere,
//! or if it does not build, the worker uses `rdev-sandbox-init` (cargo
//! shows a warning).

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=small");
    println!("cargo::rustc-check-cfg=cfg(rdev_small_init)");
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if os != "linux" || arch != "x86_64" {
        return;
    }
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("rdev-small-init");
    let mut rustc = Command::new(env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()));
    rustc.args([
        "--edition",
        "2024",
        "--crate-type",
        "bin",
        "--crate-name",
        "rdev_small_init",
    ]);
    for codegen in [
        "panic=abort",
        "opt-level=2",
        "debuginfo=0",
        "strip=symbols",
        "relocation-model=static",
        "link-arg=-nostartfiles",
        "link-arg=-nostdlib",
        "link-arg=-static",
    ] {
        rustc.args(["-C", codegen]);
    }
    if let Ok(target) = env::var("TARGET") {
        rustc.args(["--target", &target]);
    }
    if let Ok(linker) = env::var("RUSTC_LINKER") {
        rustc.arg("-C").arg(format!("linker={linker}"));
    }
    rustc.arg("small/main.rs").arg("-o").arg(&out);
    match rustc.output() {
        Ok(o) if o.status.success() => {
            println!("cargo::rustc-cfg=rdev_small_init");
            println!("cargo::rustc-env=RDEV_SMALL_INIT_BIN={}", out.display());
        }
        Ok(o) => println!(
            "cargo::warning=the small rdev-sandbox-init did not build ({}), the worker will use rdev-sandbox-init: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .unwrap_or("")
        ),
        Err(e) => println!(
            "cargo::warning=the small rdev-sandbox-init did not build ({e}), the worker will use rdev-sandbox-init"
        ),
    }
}
