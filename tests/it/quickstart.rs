//! `poolplane quickstart` as a newcomer runs it: a child process whose
//! printed commands are run as printed (grpcurl, `poolplane ctl`), then
//! Ctrl-C, after which nothing of its cluster is left.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Lines the quickstart printed, up to and including the Ctrl-C line.
fn read_next_steps(stdout: impl std::io::Read + Send + 'static) -> Vec<String> {
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines_rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the quickstart never finished printing: {lines:#?}"));
        let last = line.starts_with("Ctrl-C stops");
        lines.push(line);
        if last {
            return lines;
        }
    }
}

fn run_as_printed(line: &str) -> (bool, String) {
    let output = Command::new("sh")
        .args(["-c", line.trim()])
        .output()
        .unwrap_or_else(|err| panic!("sh: {err}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_quickstart_serves_a_demo_whose_printed_commands_work_and_ctrl_c_leaves_nothing() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_poolplane"))
        .args(["quickstart", "--grpc-listen", "127.0.0.1:0"])
        .args(["--http-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start poolplane quickstart");
    let stdout = child.stdout.take().expect("stdout");
    let lines = read_next_steps(stdout);
    let printed = lines.join("\n");
    let dir = printed
        .split_whitespace()
        .find(|word| word.contains("poolplane-quickstart-"))
        .map(|word| word.trim_end_matches(['.', ')']).to_string())
        .unwrap_or_else(|| panic!("no cluster directory in:\n{printed}"));
    assert!(
        std::path::Path::new(&dir).is_dir(),
        "{dir} exists while it runs"
    );

    let select = lines
        .iter()
        .find(|line| line.contains("grpcurl") && line.contains("SELECT"))
        .unwrap_or_else(|| panic!("no grpcurl SELECT in:\n{printed}"));
    let (ok, answer) = run_as_printed(select);
    assert!(ok, "{select}\n{answer}");
    assert!(
        answer.contains("teapot") && answer.contains("\"numericValue\": \"24.50\""),
        "{answer}"
    );

    let insert = lines
        .iter()
        .find(|line| line.contains("grpcurl") && line.contains("INSERT"))
        .unwrap_or_else(|| panic!("no grpcurl INSERT in:\n{printed}"));
    let (ok, answer) = run_as_printed(insert);
    assert!(
        ok && answer.contains("\"rowsAffected\": \"1\""),
        "{insert}\n{answer}"
    );

    let pools = lines
        .iter()
        .find(|line| line.contains(" ctl ") && line.trim_end().ends_with(" pools"))
        .unwrap_or_else(|| panic!("no ctl pools in:\n{printed}"));
    let (ok, table) = run_as_printed(pools);
    assert!(ok, "{pools}\n{table}");
    let demo_row = table
        .lines()
        .find(|row| row.starts_with("demo "))
        .unwrap_or_else(|| panic!("no demo row:\n{table}"));
    assert!(demo_row.contains("healthy"), "{table}");
    assert!(
        table.lines().any(|row| row.starts_with("demo_readonly ")),
        "{table}"
    );

    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(interrupted.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the quickstart did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
    }
    assert!(status.success(), "exit {status}: {stderr}");
    assert!(!std::path::Path::new(&dir).exists(), "{dir} is left behind");
    let left = Command::new("pgrep")
        .args(["-f", &dir])
        .output()
        .expect("pgrep");
    assert!(
        left.stdout.is_empty(),
        "processes of the cluster remain: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

#[test]
fn without_postgresql_it_says_how_to_install_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_poolplane"))
        .args(["quickstart", "--pg-bin", "/nonexistent/bin"])
        .output()
        .expect("run poolplane quickstart");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/bin"), "{stderr}");
    assert!(stderr.contains("apt-get install postgresql"), "{stderr}");
}
