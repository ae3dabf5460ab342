//! `yardctl completion`: a script each shell loads, naming the commands,
//! written with no control plane to talk to.

use std::process::Command;

fn completion(shell: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_yardctl"))
        // Nothing listens there: the script needs no control plane.
        .args(["--server", "http://127.0.0.1:1", "completion", shell])
        .output()
        .unwrap()
}

#[test]
fn completion_scripts_name_the_commands() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef yardctl"),
        ("fish", "complete -c yardctl"),
    ] {
        let out = completion(shell);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: {script}");
        for command in [
            "apply", "get", "delete", "watch", "nodes", "rollout", "token",
        ] {
            assert!(script.contains(command), "{shell} script lacks {command}");
        }
    }
    let out = completion("tcsh");
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unknown shell is a usage error"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tcsh") && stderr.contains("bash"),
        "{stderr}"
    );
}
