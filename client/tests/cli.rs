//! The `keyreg` binary's contract: --help everywhere, one-line reasons and
//! non-zero exit codes on failure, key files written private.

use std::process::{Command, Output};

fn keyreg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyreg"))
        .args(args)
        .env_remove("KEYREG_NODE")
        .env_remove("KEYREG_GENESIS")
        .env_remove("KEYREG_STATE")
        .output()
        .unwrap()
}

fn stderr_line(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(text.trim_end().lines().count(), 1, "not one line: {text:?}");
    text
}

#[test]
fn every_command_has_help() {
    for cmd in [
        vec![],
        vec!["keygen"],
        vec!["keygen", "device"],
        vec!["keygen", "admin"],
        vec!["register"],
        vec!["rotate"],
        vec!["revoke"],
        vec!["lookup"],
        vec!["history"],
        vec!["governance"],
        vec!["governance", "propose"],
        vec!["governance", "propose", "add-org"],
        vec!["governance", "approve"],
        vec!["governance", "show"],
        vec!["governance", "submit"],
        vec!["session"],
        vec!["session", "listen"],
        vec!["session", "connect"],
        vec!["status"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let out = keyreg(&args);
        assert!(out.status.success(), "{cmd:?} --help failed");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{cmd:?}"
        );
    }
}

#[test]
fn failures_exit_non_zero_with_one_line() {
    let out = keyreg(&["lookup", "acme/alpha"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_line(&out).contains("--genesis"));

    let out = keyreg(&["lookup"]);
    assert_eq!(out.status.code(), Some(2));
    stderr_line(&out);

    let out = keyreg(&[
        "keygen",
        "device",
        "Not A Name",
        "--out",
        "/nonexistent/x.json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_line(&out).contains("device name"));
}

#[test]
fn keygen_writes_private_files_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev.json");
    let path_str = path.to_str().unwrap();
    let out = keyreg(&[
        "--json",
        "keygen",
        "device",
        "acme/sensor-1",
        "--out",
        path_str,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["name"], "acme/sensor-1");
    assert_eq!(json["signing_key"].as_str().unwrap().len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let out = keyreg(&["keygen", "device", "acme/sensor-1", "--out", path_str]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_line(&out).contains("already exists"));
}
