//! What an operator types first: `--help` and `--print-config` on every
//! binary, with every secret the configuration can hold redacted.

use orq_e2e::bin;
use serde_json::Value;
use std::process::Command;

const BINARIES: &[&str] = &["gateway", "dispatcher", "bot-agent", "timeout-reaper"];

/// Secrets given to a binary, none of which `--print-config` may show.
const SECRETS: &[(&str, &str)] = &[
    (
        "ORQ_DATABASE__URL",
        "postgres://orq:pg-Secret-1@127.0.0.1:5432/orq",
    ),
    // Two nodes of a cluster: each URL keeps its user, loses its password.
    (
        "ORQ_AMQP__URL",
        "amqp://orq:amqp-Secret-2@127.0.0.1:5672/%2f,amqp://orq2:amqp-Secret-2b@127.0.0.1:5673/%2f",
    ),
    (
        "ORQ_SECURITY__SECRET_KEY",
        "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e7abcd",
    ),
    ("ORQ_AGENT__TOKEN", "orq_agent-Secret-3"),
    (
        "ORQ_NOTIFY__SMTP_URL",
        "smtp://mailer:smtp-Secret-4@127.0.0.1:25",
    ),
    ("ORQ_NOTIFY__SMS_TOKEN", "sms-Secret-5"),
    ("ORQ_NOTIFY__PUSH_TOKEN", "push-Secret-6"),
    ("ORQ_STORAGE__S3_SECRET_ACCESS_KEY", "s3-Secret-7"),
];

fn run(binary: &str, arg: &str) -> anyhow::Result<(bool, String)> {
    let mut cmd = Command::new(bin(binary));
    cmd.arg(arg).env_remove("ORQ_CONFIG");
    for (k, v) in SECRETS {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

#[test]
fn every_binary_has_help() -> anyhow::Result<()> {
    for binary in BINARIES {
        let (ok, text) = run(binary, "--help")?;
        assert!(ok, "{binary} --help failed");
        assert!(text.contains("Usage:"), "{binary} --help:\n{text}");
        assert!(text.contains("--print-config"), "{binary} --help:\n{text}");
        assert!(text.contains("--config"), "{binary} --help:\n{text}");
    }
    Ok(())
}

#[test]
fn every_binary_prints_its_config_with_secrets_redacted() -> anyhow::Result<()> {
    for binary in BINARIES {
        let (ok, text) = run(binary, "--print-config")?;
        assert!(ok, "{binary} --print-config failed:\n{text}");
        let config: Value = serde_json::from_str(&text)?;
        // What was set is there...
        assert_eq!(
            config["database"]["url"], "postgres://orq:<redacted>@127.0.0.1:5432/orq",
            "{binary}"
        );
        assert_eq!(
            config["amqp"]["url"],
            "amqp://orq:<redacted>@127.0.0.1:5672/%2f,amqp://orq2:<redacted>@127.0.0.1:5673/%2f",
            "{binary}"
        );
        assert_eq!(config["security"]["secret_key"], "<redacted>", "{binary}");
        assert_eq!(config["agent"]["token"], "<redacted>", "{binary}");
        // ...and no secret is: each holds `Secret-` or the key's pattern.
        assert!(
            !text.contains("Secret-") && !text.contains("5ec7e75ec7e7"),
            "{binary} --print-config shows a secret:\n{text}"
        );
    }
    Ok(())
}
