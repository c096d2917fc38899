# Sourced (not run) by .ci/build-driver, .ci/driver-clippy and
# .ci/driver-stack-frames: the one
# definition of how the Windows driver is compiled on Linux.
#
# Debian's rustc-web (Rust 1.96 with its standard-library source, rust-web-src)
# compiles core and alloc for x86_64-pc-windows-msvc (-Zbuild-std, allowed on
# a stable compiler by RUSTC_BOOTSTRAP=1), and lld-link (lld-16) links a
# kernel-mode PE. `--cfg thinagent_no_wdk` swaps wdk-alloc and wdk-panic for
# driver/windows/no_wdk.rs. Every kernel routine is imported by raw-dylib from
# the module that exports it, so no import library (and nothing from the WDK)
# is needed.
#
# Overrides: THINAGENT_DRIVER_RUSTC, THINAGENT_DRIVER_CARGO,
# THINAGENT_DRIVER_LINKER, THINAGENT_DRIVER_CLIPPY.

driver_target=x86_64-pc-windows-msvc
driver_rustc="${THINAGENT_DRIVER_RUSTC:-/usr/bin/rustc}"
driver_cargo_bin="${THINAGENT_DRIVER_CARGO:-/usr/bin/cargo}"
driver_linker="${THINAGENT_DRIVER_LINKER:-$(command -v lld-link-16 || command -v lld-link || true)}"
# Clippy of the same compiler (Debian: rust-web-clippy), for .ci/driver-clippy.
driver_clippy_bin="${THINAGENT_DRIVER_CLIPPY:-$(dirname "$driver_cargo_bin")/cargo-clippy}"
driver_extra_rustflags=()

# driver_toolchain_check NAME: exits 3, naming the missing Debian packages on
# stderr, when the toolchain is not installed (the tests treat exit 3 as
# "cannot build here": skipped, or failed under CI=true).
driver_toolchain_check() {
    local missing=() sysroot_src
    [ -x "$driver_rustc" ] || missing+=("$driver_rustc (Debian: rustc-web)")
    [ -x "$driver_cargo_bin" ] || missing+=("$driver_cargo_bin (Debian: cargo-web)")
    [ -n "$driver_linker" ] || missing+=("lld-link (Debian: lld-16)")
    if [ -x "$driver_rustc" ]; then
        sysroot_src="$("$driver_rustc" --print sysroot 2>/dev/null || true)/lib/rustlib/src/rust/library"
        [ -d "$sysroot_src/core" ] ||
            missing+=("the standard library source at $sysroot_src (Debian: rust-web-src)")
    fi
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "$1: cannot build the driver, missing: ${missing[*]}" >&2
        exit 3
    fi
}

# driver_clippy_check NAME: exits 3 when cargo-clippy of that compiler is
# missing.
driver_clippy_check() {
    if [ ! -x "$driver_clippy_bin" ]; then
        echo "$1: cannot lint the driver, missing: $driver_clippy_bin (Debian: rust-web-clippy)" >&2
        exit 3
    fi
}

# driver_profile NAME PROFILE: sets driver_profile_flags (cargo's flags) and
# driver_profile_dir (the output directory under the target triple); exits 2
# on anything but release or dev.
driver_profile() {
    case "$2" in
        release) driver_profile_flags=(--release); driver_profile_dir=release ;;
        dev) driver_profile_flags=(); driver_profile_dir=debug ;;
        *) echo "$1: unknown profile '$2' (release or dev)" >&2; exit 2 ;;
    esac
}

# driver_cargo TARGET_DIR SUBCOMMAND [ARGS...]: runs Debian's cargo (for
# `clippy`, Debian's cargo-clippy, which runs that cargo) on the
# `thinagent` library for the Windows target with the driver's compiler and
# linker flags, in TARGET_DIR (a directory of its own: these artifacts come
# from another compiler than the workspace's, and each script's flags differ).
# driver_extra_rustflags (an array, empty unless the caller sets it) is added
# to the flags of every crate. Flags a caller's environment may carry (a
# `cargo test` running a test that calls .ci/build-driver, a wrapper) are
# dropped so the build is always this one.
driver_cargo() {
    local target_dir="$1" subcommand="$2" a
    shift 2
    local link_args=(/DRIVER /SUBSYSTEM:NATIVE,10.0 /ENTRY:DriverEntry /NODEFAULTLIB /RELEASE
        /OPT:REF /OPT:ICF /INCREMENTAL:NO)
    local rustflags=(--cfg thinagent_no_wdk -C "linker=$driver_linker" -C panic=abort
        -C target-feature=+crt-static)
    for a in "${link_args[@]}"; do rustflags+=(-C "link-arg=$a"); done
    rustflags+=("${driver_extra_rustflags[@]}")
    local run=("$driver_cargo_bin" "$subcommand")
    [ "$subcommand" = clippy ] && run=("$driver_clippy_bin" clippy)
    env -u RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS -u RUSTC_WRAPPER -u RUSTC_WORKSPACE_WRAPPER \
        -u CARGO_BUILD_TARGET -u CARGO_BUILD_TARGET_DIR \
        CARGO="$driver_cargo_bin" RUSTC="$driver_rustc" RUSTC_BOOTSTRAP=1 \
        CARGO_TARGET_DIR="$target_dir" \
        CARGO_ENCODED_RUSTFLAGS="$(IFS=$'\x1f'; echo "${rustflags[*]}")" \
        "${run[@]}" -q -Zbuild-std=core,alloc \
        -Zbuild-std-features=compiler-builtins-mem \
        --target "$driver_target" -p thinagent --lib "$@"
}
