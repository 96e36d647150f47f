//! Compiles `src/c/exec_list.c`, which defines the variadic `execl`, `execlp` and `execle`
//! that stable Rust cannot define. The `cc` crate picks the C compiler for the target: `CC`,
//! else `cc` (scripts/build-musl.sh sets musl-gcc).

fn main() {
    println!("cargo:rerun-if-changed=src/c/exec_list.c");
    cc::Build::new()
        .file("src/c/exec_list.c")
        .flag_if_supported("-fvisibility=hidden")
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .compile("envproxy_exec_list");
}
