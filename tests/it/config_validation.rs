//! Configuration: the first format's example file (`config/connection_pool.yaml`),
//! the shipped defaults, and
//! malformed files each giving the message that names what is wrong.

use poolplane::config::Config;

fn errors_of(yaml: &str) -> Vec<String> {
    match Config::parse(yaml, "test.yaml") {
        Ok(_) => panic!("expected errors for:\n{yaml}"),
        Err(errors) => errors.errors.iter().map(ToString::to_string).collect(),
    }
}

fn assert_single_error(yaml: &str, expected: &[&str]) {
    let errors = errors_of(yaml);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    for part in expected {
        assert!(errors[0].contains(part), "`{}` lacks `{part}`", errors[0]);
    }
}

const POOL: &str = "connection_pool:\n  pools:\n    - name: main\n      database: app\n";

#[test]
fn original_design_file_fails_only_on_its_missing_certificate() {
    let text = std::fs::read_to_string("config/connection_pool.yaml").expect("shipped file");
    assert_single_error(
        &text,
        &[
            "connection_pool.security.ssl.ca_certificate",
            "/etc/scratchrobin/ssl/ca.crt",
            "line 52",
        ],
    );
}

#[test]
fn original_design_file_loads_with_ssl_disabled() {
    let text = std::fs::read_to_string("config/connection_pool.yaml").expect("shipped file");
    let text = text.replace(
        "      enabled: true\n      verify_peer",
        "      enabled: false\n      verify_peer",
    );
    let config = Config::parse(&text, "original").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.pools.len(), 2);
    let main = &config.pools[0];
    assert_eq!(main.name, "scratchbird_main");
    assert_eq!(main.limits.max_connections, 15);
    assert_eq!(main.limits.min_connections, 3);
    assert_eq!(main.application_name, "poolplane/scratchbird_main");
    let analytics = &config.pools[1];
    assert_eq!(analytics.limits.connection_timeout.as_millis(), 60_000);
    // Inherited from default_pool.
    assert_eq!(analytics.limits.health_check_interval.as_millis(), 60_000);
    assert_eq!(analytics.recovery.max_attempts, 3);
    assert_eq!(analytics.recovery.base_delay.as_millis(), 1000);
    assert!((config.monitoring.utilization_threshold - 0.8).abs() < f64::EPSILON);
}

#[test]
fn shipped_default_config_is_valid() {
    let config = Config::load(std::path::Path::new("config/poolplane.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.server.grpc_listen.to_string(), "127.0.0.1:50051");
    assert_eq!(config.pools.len(), 1);
}

#[test]
fn each_malformed_config_names_its_problem() {
    let cases: Vec<(String, Vec<&str>)> = vec![
        ("connection_pool: [\n".into(), vec!["line"]),
        ("pools: []\n".into(), vec!["connection_pool"]),
        (
            format!("{POOL}      max_conections: 3\n"),
            vec!["line 5", "pools[0].max_conections", "did you mean `max_connections`"],
        ),
        (
            format!("{POOL}    - name: main\n      database: other\n"),
            vec!["line 5", "duplicate pool name `main`"],
        ),
        (
            format!("{POOL}      min_connections: 9\n      max_connections: 4\n"),
            vec!["pools[0].min_connections", "greater than max_connections (4)"],
        ),
        (format!("{POOL}      max_connections: 0\n"), vec!["pools[0].max_connections", "allowed 1 to"]),
        (
            format!("{POOL}      max_connections: 2\n      max_session_connections: 3\n"),
            vec!["line 6", "pools[0].max_session_connections", "more than max_connections (2)"],
        ),
        (
            format!("{POOL}      idle_in_transaction_timeout_ms: -5\n"),
            vec!["pools[0].idle_in_transaction_timeout_ms", "must be positive"],
        ),
        (
            "connection_pool:\n  pools:\n\t- name: main\n".into(),
            vec!["line 3", "column 1", "tab in the indentation"],
        ),
        (
            format!("{POOL}      user: {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
            vec!["line 5", "nested more than 32 deep"],
        ),
        // An apostrophe in a plain scalar is no quote (found while fuzzing:
        // a character-level pre-scan took it for one and let this through
        // to the parser, 90 s of work).
        (
            format!(
                "connection_pool:\n  enabled: it's\n  x: {}{}\n",
                "[".repeat(100_000),
                "]".repeat(100_000)
            ),
            vec!["line 3", "nested more than 32 deep"],
        ),
        (
            format!("connection_pool:\n{}", (1..40).map(|i| format!("{}k{i}:\n", "  ".repeat(i))).collect::<String>()),
            vec!["nested more than 32 deep"],
        ),
        (
            format!("{POOL}# {}\n", "x".repeat(2 << 20)),
            vec!["at most 1048576"],
        ),
        (
            "connection_pool:\n  pools:\n    - name: main\n      database: \"app\\0x\"\n".into(),
            vec!["pools[0].database", "control character (U+0000) at byte 3"],
        ),
        (
            format!("{POOL}      user: \"bob\\nsmith\"\n"),
            vec!["pools[0].user", "control character (U+000A)"],
        ),
        (
            format!("{POOL}      application_name: \"app\\u202Egnp.exe\"\n"),
            vec!["pools[0].application_name", "direction-changing character (U+202E) at byte 3"],
        ),
        (
            format!("{POOL}      connection_timeout_ms: 0\n"),
            vec!["connection_timeout_ms", "must be positive"],
        ),
        (
            format!("{POOL}      idle_timeout_ms: -5\n"),
            vec!["line 5", "idle_timeout_ms", "-5 ms must be positive"],
        ),
        (
            "connection_pool:\n  pools:\n    - name: \"bad name!\"\n      database: app\n".into(),
            vec!["line 3", "pools[0].name", "invalid pool name `bad name!`"],
        ),
        (
            format!("{POOL}      password_env: POOLPLANE_TEST_SURELY_UNSET\n"),
            vec!["pools[0].password_env", "POOLPLANE_TEST_SURELY_UNSET", "not set"],
        ),
        (
            format!("{POOL}      password_file: /nonexistent/poolplane/pw\n"),
            vec!["pools[0].password_file", "/nonexistent/poolplane/pw"],
        ),
        (
            "connection_pool:\n  security:\n    ssl:\n      enabled: true\n      ca_certificate: /nonexistent/ca.crt\n".into(),
            vec!["line 5", "security.ssl.ca_certificate", "/nonexistent/ca.crt"],
        ),
        (
            format!("{POOL}      max_connections: lots\n"),
            vec!["line 5", "max_connections", "invalid type"],
        ),
        (
            format!("{POOL}      sslmode: sometimes\n"),
            vec!["pools[0].sslmode", "`sometimes`", "allowed disable, prefer, require"],
        ),
        (format!("{POOL}      port: 70000\n"), vec!["pools[0].port", "70000", "1 to 65535"]),
        (
            "connection_pool:\n  pools:\n    - name: main\n".into(),
            vec!["pools[0].database", "missing"],
        ),
        (
            "connection_pool:\n  monitoring:\n    error_rate_threshold: 5\n".into(),
            vec!["line 3", "error_rate_threshold", "0.0 to 1.0"],
        ),
        (
            "connection_pool:\n  server:\n    grpc_listen: \"localhost:what\"\n".into(),
            vec!["line 3", "server.grpc_listen", "IP:PORT"],
        ),
        (
            "connection_pool:\n  security:\n    authentication:\n      method: kerberos\n".into(),
            vec!["authentication.method", "`kerberos`", "allowed database"],
        ),
        (
            "connection_pool:\n  default_pool:\n    name: nope\n".into(),
            vec!["default_pool.name", "cannot have a name"],
        ),
        (
            "connection_pool:\n  helth_monitoring:\n    enabled: true\n".into(),
            vec!["line 2", "helth_monitoring", "did you mean `health_monitoring`"],
        ),
    ];
    assert!(cases.len() >= 15);
    for (yaml, expected) in cases {
        let errors = errors_of(&yaml);
        let all = errors.join("\n");
        for part in expected {
            assert!(
                all.contains(part),
                "for\n{yaml}\nexpected `{part}` in:\n{all}"
            );
        }
    }
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let yaml = "connection_pool:\n  pools:\n    - name: a\n      database: x\n      max_connections: 0\n    - name: b\n      database: y\n      port: 0\n      min_connections: -1\n";
    let errors = errors_of(yaml);
    assert_eq!(errors.len(), 3, "{errors:#?}");
}

#[test]
fn an_empty_section_is_a_section_left_out() {
    for yaml in [
        "connection_pool:\n".to_string(),
        "connection_pool:\n  default_pool:\n  server: ~\n  pools:\n    - name: main\n      database: app\n".to_string(),
    ] {
        assert!(Config::parse(&yaml, "test.yaml").is_ok(), "{yaml}");
    }
}

/// A secret or certificate file that is a FIFO or a device is refused at
/// once with the key that names it: reading it would block or never end.
#[test]
fn a_fifo_or_a_device_as_a_secret_or_certificate_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("secret.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let fifo = fifo.display().to_string();
    for (file, expected) in [
        (fifo.as_str(), "not a regular file"),
        ("/dev/zero", "not a regular file"),
    ] {
        assert_single_error(
            &format!("{POOL}      password_file: {file}\n"),
            &["connection_pool.pools[0].password_file", file, expected],
        );
        assert_single_error(
            &format!(
                "{POOL}  security:\n    ssl:\n      enabled: true\n      ca_certificate: {file}\n"
            ),
            &[
                "connection_pool.security.ssl.ca_certificate",
                file,
                expected,
            ],
        );
    }
}

#[test]
fn one_token_for_two_identities_is_refused() {
    let hash = "a".repeat(64);
    let yaml = format!(
        "connection_pool:\n  pools:\n    - name: p\n      database: d\n  server:\n    auth:\n      tokens:\n        - {{name: app, token_sha256: \"{hash}\", role: client, pools: [p]}}\n        - {{name: ops, token_sha256: \"{hash}\", role: admin}}\n"
    );
    let errors = errors_of(&yaml);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("tokens[1]") && e.contains("the same token as `app`")),
        "{errors:?}"
    );
}
