//! There is no Docker engine on the development machines, so the compose file
//! and the Dockerfile are checked against the workspace instead: services,
//! commands, configuration files, environment keys, health and dependencies.

use orq_e2e::orq_shared::config::{Settings, env_keys};
use orq_e2e::repo_root;
use serde_yaml::Value;
use std::path::Path;

const SERVICES: &[&str] = &["gateway", "dispatcher", "timeout-reaper", "bot-agent"];

fn compose() -> Value {
    let path = repo_root().join("docker-compose.yml");
    let text = std::fs::read_to_string(&path).expect("docker-compose.yml is readable");
    let mut value: Value = serde_yaml::from_str(&text).expect("docker-compose.yml is valid YAML");
    value.apply_merge().expect("YAML merge keys resolve");
    value
}

fn service<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let s = &doc["services"][name];
    assert!(
        !s.is_null(),
        "service {name} is missing from docker-compose.yml"
    );
    s
}

fn argv(service: &Value) -> Vec<String> {
    match service["command"].clone() {
        Value::Sequence(items) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

fn environment(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                (k.as_str().unwrap_or_default().to_string(), value)
            })
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .filter_map(|v| v.as_str())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[test]
fn every_service_runs_a_real_binary_with_real_configuration() {
    let doc = compose();
    let keys = env_keys();
    for name in ["postgres", "rabbitmq"] {
        let s = service(&doc, name);
        assert!(
            !s["healthcheck"]["test"].is_null(),
            "{name} needs a healthcheck for depends_on: service_healthy"
        );
    }
    for name in SERVICES {
        let s = service(&doc, name);
        let args = argv(s);
        let binary = args
            .first()
            .unwrap_or_else(|| panic!("{name} has no command"));
        assert!(
            SERVICES.contains(&binary.as_str()),
            "{name} runs {binary:?}, which is not a workspace binary"
        );
        assert!(
            repo_root().join(binary).join("src/main.rs").exists(),
            "{name}: no crate {binary}/ with a main.rs"
        );
        for pair in args.windows(2).filter(|w| w[0] == "--config") {
            let inside = pair[1]
                .strip_prefix("/app/")
                .unwrap_or_else(|| panic!("{name}: config {} is not under /app", pair[1]));
            let file = repo_root().join(inside);
            assert!(
                file.exists(),
                "{name}: config file {} is not in the repository",
                file.display()
            );
            Settings::load(Some(&file))
                .unwrap_or_else(|e| panic!("{name}: {} does not load: {e}", file.display()));
        }
        let env = environment(s);
        assert!(!env.is_empty(), "{name} has no environment");
        for (key, _) in env.iter().filter(|(k, _)| k.starts_with("ORQ_")) {
            assert!(
                keys.contains(key),
                "{name} sets {key}, which is not a configuration key"
            );
        }
        let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let db = get("ORQ_DATABASE__URL").unwrap_or_else(|| panic!("{name}: no ORQ_DATABASE__URL"));
        assert!(
            db.contains("@postgres:5432/"),
            "{name}: database URL {db} does not point at the postgres service"
        );
        let amqp = get("ORQ_AMQP__URL").unwrap_or_else(|| panic!("{name}: no ORQ_AMQP__URL"));
        assert!(
            amqp.contains("@rabbitmq:5672/"),
            "{name}: AMQP URL {amqp} does not point at the rabbitmq service"
        );
        for dep in ["postgres", "rabbitmq"] {
            assert_eq!(
                s["depends_on"][dep]["condition"].as_str(),
                Some("service_healthy"),
                "{name} must wait for {dep} to be healthy"
            );
        }
        let build = &s["build"];
        assert_eq!(
            build["dockerfile"].as_str(),
            Some("deploy/Dockerfile"),
            "{name} builds from deploy/Dockerfile"
        );
    }
}

#[test]
fn the_gateway_is_published_and_checked() {
    let doc = compose();
    let gw = service(&doc, "gateway");
    let ports: Vec<String> = gw["ports"]
        .as_sequence()
        .map(|p| {
            p.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        ports.iter().any(|p| p.ends_with(":8080")),
        "gateway publishes 8080: {ports:?}"
    );
    let env = environment(gw);
    assert!(
        env.iter()
            .any(|(k, v)| k == "ORQ_GATEWAY__LISTEN" && v.starts_with("0.0.0.0:8080")),
        "gateway listens on 0.0.0.0:8080 inside its container"
    );
    let test = serde_yaml::to_string(&gw["healthcheck"]["test"]).unwrap_or_default();
    assert!(
        test.contains("/readyz"),
        "gateway healthcheck uses /readyz: {test}"
    );
}

#[test]
fn bot_agents_scale_into_distinct_bots() {
    let doc = compose();
    let agent = service(&doc, "bot-agent");
    assert!(
        agent["container_name"].is_null(),
        "a fixed container_name forbids --scale"
    );
    let env = environment(agent);
    assert!(
        !env.iter().any(|(k, _)| k == "ORQ_AGENT__NAME"),
        "a fixed ORQ_AGENT__NAME would make every replica the same bot; the host name differs per replica"
    );
    assert!(
        env.iter().any(|(k, _)| k == "ORQ_AGENT__TOKEN"),
        "the agent needs its bot token"
    );
    assert!(
        env.iter()
            .any(|(k, v)| k == "ORQ_AGENT__GATEWAY_URL" && v.contains("gateway:8080")),
        "the agent registers with the gateway service"
    );
    assert_eq!(
        agent["depends_on"]["gateway"]["condition"].as_str(),
        Some("service_healthy"),
        "agents register only once the gateway is healthy"
    );
    assert!(
        agent["ports"].is_null(),
        "published ports would clash between replicas"
    );
}

#[test]
fn the_dockerfile_builds_and_ships_every_binary() {
    let text = std::fs::read_to_string(repo_root().join("deploy/Dockerfile"))
        .expect("deploy/Dockerfile exists");
    let stages = text
        .lines()
        .filter(|l| l.trim_start().starts_with("FROM "))
        .count();
    assert!(
        stages >= 2,
        "a multi-stage build: found {stages} FROM line(s)"
    );
    for bin in SERVICES {
        assert!(
            text.contains(&format!("-p {bin}")),
            "the build stage builds {bin}"
        );
        assert!(
            text.contains(&format!("/out/{bin}")),
            "the runtime stage ships {bin}"
        );
    }
    assert!(
        text.contains("COPY examples"),
        "the demo automation ships in the image"
    );
}

#[test]
fn the_demo_agent_configuration_points_at_real_automations() {
    let file = repo_root().join("examples/agent.toml");
    let settings = Settings::load(Some(&file)).expect("examples/agent.toml loads");
    assert!(
        !settings.agent.systems.is_empty(),
        "the demo agent declares systems"
    );
    for (system, argv) in &settings.agent.systems {
        assert!(!argv.is_empty(), "system {system} has an empty command");
        for arg in argv.iter().filter(|a| a.starts_with("examples/")) {
            assert!(
                Path::new(&repo_root()).join(arg).exists(),
                "system {system} runs {arg}, which is not in the repository"
            );
        }
    }
}
