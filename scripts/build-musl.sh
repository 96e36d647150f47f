#!/usr/bin/env bash
# Builds libenvproxy.so for musl (Alpine and other musl-based images) and prints its path.
#
#   scripts/build-musl.sh [--release]
#
# Needs the Rust target (`rustup target add x86_64-unknown-linux-musl`) and musl-gcc
# (`apt-get install musl-tools`). Rust links musl programs statically by default, which a
# shared library cannot be, so crt-static is turned off and musl-gcc links against musl's
# libc.so. The unwinder that catches panics at the library's C boundary would then come from
# libgcc_s, which Alpine images often lack. A `libgcc_s.so` linker script in the target
# directory points the linker at Rust's static LLVM libunwind instead, so the library needs
# nothing but musl's libc. musl-gcc also compiles the library's C file (execl and its kin).
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-musl
profile=debug
for arg in "$@"; do
    case "$arg" in
        --release) profile=release ;;
        *)
            echo "build-musl.sh: unknown option $arg (expected --release)" >&2
            exit 2
            ;;
    esac
done

command -v musl-gcc >/dev/null || {
    echo "build-musl.sh: musl-gcc is missing; install it with apt-get install musl-tools" >&2
    exit 1
}
sysroot=$(rustc --print sysroot)
unwind="$sysroot/lib/rustlib/$target/lib/self-contained/libunwind.a"
[[ -f "$unwind" ]] || {
    echo "build-musl.sh: $unwind is missing; run rustup target add $target" >&2
    exit 1
}

target_dir=${CARGO_TARGET_DIR:-target}
mkdir -p "$target_dir"
target_dir=$(cd "$target_dir" && pwd)
shim="$target_dir/musl-link"
mkdir -p "$shim"
echo "INPUT($unwind)" >"$shim/libgcc_s.so"

release=()
[[ "$profile" == release ]] && release=(--release)
# Cargo ignores the target's flags when RUSTFLAGS is set, so the caller's RUSTFLAGS (such as
# --remap-path-prefix) are moved into them.
env -u RUSTFLAGS \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=musl-gcc \
    CC_x86_64_unknown_linux_musl=musl-gcc \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=-crt-static -C link-arg=-L$shim" \
    cargo build -p envproxy-preload --target "$target" ${release[@]+"${release[@]}"} >&2

echo "$target_dir/$target/$profile/libenvproxy.so"
