//! Compiles the agent's BPF programs into objects that it embeds: the overlay's receive fast
//! path (`bpf/decap.c`, `net::fastpath`) and VIP balancing at connect() (`bpf/socklb.c`,
//! `lb::socket`). Needs `clang` and the kernel's BPF headers (`libbpf-dev`); both are
//! installed by `scripts/install-deps`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // `asm/types.h` lives under the multiarch include directory on Debian.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    for name in ["decap", "socklb"] {
        let src = format!("bpf/{name}.c");
        println!("cargo:rerun-if-changed={src}");
        let out = out_dir.join(format!("{name}.o"));
        let status = Command::new("clang")
            .args([
                "-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-I", &multiarch, "-c", &src,
                "-o",
            ])
            .arg(&out)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!(
                "clang failed to compile {src} ({s}); needs libbpf-dev for <bpf/bpf_helpers.h>"
            ),
            Err(e) => panic!(
                "cannot run clang to compile {src}: {e}; install it with ./scripts/install-deps \
                 (apt-get install -y --no-install-recommends clang libbpf-dev)"
            ),
        }
    }
}
