//! Links libllamamoe (the shared library), found in this order:
//! 1. `LLAMAMOE_LIB_DIR`: the directory holding libllamamoe.so / .dylib (e.g. a CMake build dir);
//! 2. `pkg-config --libs-only-L llamamoe` (an installed copy; the pkg-config program is run
//!    directly, no crate is needed);
//! 3. otherwise just `-lllamamoe`, for the system linker to find in its default paths.
//!
//! At run time the dynamic loader must find the library too (e.g. LD_LIBRARY_PATH).

use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=LLAMAMOE_LIB_DIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_LIBDIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_SYSROOT_DIR");
    println!("cargo:rerun-if-changed=build.rs");

    if let Some(dir) = env::var_os("LLAMAMOE_LIB_DIR") {
        if !dir.is_empty() {
            println!("cargo:rustc-link-search=native={}", dir.to_string_lossy());
            println!("cargo:rustc-link-lib=dylib=llamamoe");
            return;
        }
    }

    let pkg_config = env::var_os("PKG_CONFIG").unwrap_or_else(|| "pkg-config".into());
    if let Ok(out) = Command::new(&pkg_config)
        .args(["--libs-only-L", "llamamoe"])
        .output()
    {
        if out.status.success() {
            for word in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Some(dir) = word.strip_prefix("-L") {
                    println!("cargo:rustc-link-search=native={}", dir);
                }
            }
        }
    }
    println!("cargo:rustc-link-lib=dylib=llamamoe");
}
