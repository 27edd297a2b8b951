//! `vitals run` in a real terminal (a pseudo-terminal driven by tests/children/pty_session.py): the child
//! reads the terminal, gets Ctrl-C, Ctrl-Z/`fg` and window-size changes as if started without vitals, and
//! vitals exits with its status.

mod common;

use std::process::Command;

use common::{child_script, require_tool, vitals_bin};

/// vitals' command line for `run -- CMD…`, with loopback listeners on kernel-chosen ports.
fn vitals_run_line(cmd: &[&str]) -> Vec<String> {
    let mut line: Vec<String> = [
        "--metrics-addr",
        "127.0.0.1:0",
        "--otlp-grpc-addr",
        "off",
        "--otlp-http-addr",
        "127.0.0.1:0",
        "run",
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    line.insert(0, vitals_bin().display().to_string());
    line.extend(cmd.iter().map(|s| s.to_string()));
    line
}

/// Runs `program` in a pty through `steps` (see pty_session.py); panics with the transcript on failure.
fn session(steps: serde_json::Value, program: &[String], no_color: bool) -> String {
    let python = require_tool("python3", "apt-get install python3");
    let mut cmd = Command::new(python);
    // A terminal type that has the features the steps wait for (readline's bracketed paste), whatever the
    // environment the suite runs in (CI may have no TERM, which readline treats as a dumb terminal).
    cmd.env("TERM", "xterm");
    if no_color {
        cmd.env("NO_COLOR", "1");
    } else {
        cmd.env_remove("NO_COLOR");
    }
    let out = cmd
        .arg(child_script("pty_session.py"))
        .arg(steps.to_string())
        .args(program)
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{transcript}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    transcript
}

#[test]
fn the_child_reads_the_terminal_and_sees_its_size() {
    // Before the fix the child ran in a background process group and `read` stopped it with SIGTTIN.
    let program = vitals_run_line(&[
        "sh",
        "-c",
        "echo READY-$((1+1)); read x; echo \"got $x\"; read y; stty size; exit 4",
    ]);
    let transcript = session(
        serde_json::json!([
            ["expect", "READY-2"],
            ["send", "hello\n"],
            ["expect", "got hello"],
            ["winsize", 33, 77],
            ["send", "\n"],
            ["expect", "33 77"],
            ["exit_status", 4],
        ]),
        &program,
        false,
    );
    assert!(
        transcript.contains("\u{1b}["),
        "log lines are coloured on a terminal:\n{transcript}"
    );
}

#[test]
fn ctrl_c_ends_the_child_and_vitals_returns_its_status() {
    let program = vitals_run_line(&["sh", "-c", "echo READY-$((1+1)); read x; exit 0"]);
    // The terminal sends SIGINT to the foreground group: the child dies of it (128 + 2); vitals survives
    // it, reaps the child and returns that status.
    let transcript = session(
        serde_json::json!([
            ["expect", "READY-2"],
            ["send", "\u{3}"],
            ["exit_status", 130]
        ]),
        &program,
        true,
    );
    assert!(
        transcript.contains("child exited; vitals exits with its code code=130"),
        "{transcript}"
    );
    assert!(
        !transcript.contains("\u{1b}["),
        "NO_COLOR turns colour off:\n{transcript}"
    );
}

#[test]
fn ctrl_z_and_fg_in_a_job_control_shell() {
    // Ctrl-Z needs a job-control shell: the kernel ignores terminal stop signals for a process group
    // without a parent in another group of the same session.
    let bash = require_tool("bash", "apt-get install bash");
    let line = vitals_run_line(&[
        "sh",
        "-c",
        "'echo READY-$((1+1)); read x; echo \"got $x\"; exit 4'",
    ])
    .join(" ");
    let program = vec![
        bash.display().to_string(),
        "--norc".into(),
        "--noprofile".into(),
        "-i".into(),
    ];
    session(
        serde_json::json!([
            ["send", format!("{line}\n")],
            // Not the echo of the typed line, which reads READY-$((1+1)).
            ["expect", "READY-2"],
            ["send", "\u{1a}"],
            ["expect", "Stopped"],
            // Typing before the shell reads its next line loses keys (it flushes the terminal's input when
            // it takes the terminal back): wait for readline to start, which it announces by turning on
            // bracketed paste.
            ["expect", "\u{1b}[?2004h"],
            // Under load the shell was seen to drop the first key typed right after a job stopped, even
            // after its prompt: a line of its own (a blank, then Enter) absorbs that, and its prompt says
            // the shell is reading.
            ["send", " \n"],
            ["expect", "\u{1b}[?2004h"],
            ["send", "fg\n"],
            ["send", "after-fg\n"],
            ["expect", "got after-fg"],
            ["send", "echo \"rc=$?\"\n"],
            ["expect", "rc=4"],
            ["send", "exit\n"],
            ["exit_status", 0],
        ]),
        &program,
        true,
    );
}
