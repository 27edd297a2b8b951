//! Lays out the code an idle vitals runs together (release builds for x86_64 Linux with glibc, linked by
//! rustc's own lld since Rust 1.90): `link/idle-symbol-order.txt` lists those functions, and lld places
//! them first, in that order. Why: the kernel maps a program's code in 64 KiB runs around each page it
//! runs, so 750 KiB of idle code scattered over a 9 MiB text kept 5 MiB of it mapped; together they take
//! about a dozen runs. `link/order_symbols.py` writes the file again; names it no longer matches are
//! skipped, so a stale file costs layout, never the build. `VITALS_SYMBOL_ORDER=off` leaves it out.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link/idle-symbol-order.txt");
    println!("cargo:rerun-if-env-changed=VITALS_SYMBOL_ORDER");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    if var("VITALS_SYMBOL_ORDER") == "off"
        || var("PROFILE") != "release"
        || var("TARGET") != "x86_64-unknown-linux-gnu"
        || !rustc_links_with_lld(&var("RUSTC"))
    {
        return;
    }
    let order = Path::new(&var("CARGO_MANIFEST_DIR")).join("link/idle-symbol-order.txt");
    if !order.is_file() {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=vitals=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bin=vitals=-Wl,--no-warn-symbol-ordering");
}

/// Rust 1.90 and later link x86_64 glibc targets with their own lld by default; earlier ones use the
/// system linker, which may not know the ordering flag.
fn rustc_links_with_lld(rustc: &str) -> bool {
    let rustc = if rustc.is_empty() { "rustc" } else { rustc };
    let Ok(out) = Command::new(rustc).arg("-vV").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(release) = text.lines().find_map(|l| l.strip_prefix("release: ")) else {
        return false;
    };
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (1, 90)
}
