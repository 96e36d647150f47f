//! The benchmark's log output on stderr when it is not a terminal.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// `serve-echo` logs one line at start, through the same log set-up as the benchmarks.
#[test]
fn redirected_log_has_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("echo.sock");
    let mut server = Command::new(env!("CARGO_BIN_EXE_envproxy-bench"))
        .arg("serve-echo")
        .arg("--socket")
        .arg(&socket)
        .args(["--reply-len", "16"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start envproxy-bench serve-echo");
    let mut line = String::new();
    let read = BufReader::new(server.stderr.take().unwrap()).read_line(&mut line);
    let _ = server.kill();
    let _ = server.wait();

    assert!(read.unwrap() > 0, "serve-echo logged nothing");
    assert!(line.contains("echo server listening"), "{line:?}");
    assert!(!line.contains('\u{1b}'), "colour codes in {line:?}");
}
