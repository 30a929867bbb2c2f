//! Podman and podman-compose as this test drives them. Every command is an
//! argv (never a shell line), runs with the test's `containers.conf` (through
//! `CONTAINERS_CONF`, so the machine's configuration is left alone) and has
//! its output captured; a failure carries the command and what it printed.

use anyhow::{Context, ensure};
use serde_json::Value;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::process::Command;

/// Runs `cmd` to its end; its stdout, or an error naming it with its stderr.
pub async fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = shown(cmd.as_std());
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot start {shown}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "{shown} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        stdout
    );
    Ok(stdout)
}

/// `program arg …`, without the environment, for messages.
fn shown(cmd: &std::process::Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Podman with the test's settings.
#[derive(Clone)]
pub struct Podman {
    conf: PathBuf,
}

impl Podman {
    /// Podman as root with runc; an error says what is missing. Rootless
    /// podman would need subordinate id ranges and fuse-overlayfs, which
    /// these machines do not set up; `deploy/test.sh` installs the rest.
    pub async fn new(conf: PathBuf) -> anyhow::Result<Podman> {
        ensure!(
            nix::unistd::Uid::effective().is_root(),
            "the compose test runs rootful podman and debootstrap, so it needs root; run `deploy/test.sh` as root"
        );
        ensure!(conf.is_file(), "{} is missing", conf.display());
        let podman = Podman { conf };
        let version = podman
            .output(["version", "--format", "{{.Client.Version}}"])
            .await
            .context("podman does not run: `deploy/test.sh` installs podman, runc, netavark and aardvark-dns with apt")?;
        let runtime = podman
            .output(["info", "--format", "{{.Host.OCIRuntime.Name}}"])
            .await?;
        ensure!(
            runtime.trim() == "runc",
            "podman {} uses the runtime {:?}, not runc (from {})",
            version.trim(),
            runtime.trim(),
            podman.conf.display()
        );
        Ok(podman)
    }

    pub fn conf(&self) -> &Path {
        &self.conf
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", &self.conf).kill_on_drop(true);
        cmd
    }

    /// `podman args…`'s stdout.
    pub async fn output<I, S>(&self, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(self.command().args(args)).await
    }

    /// Whether `podman args…` exits 0 (for the commands that answer so).
    pub async fn succeeds<I, S>(&self, args: I) -> anyhow::Result<bool>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let status = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .context("cannot start podman")?;
        Ok(status.success())
    }

    pub async fn image_id(&self, name: &str) -> anyhow::Result<Option<String>> {
        if !self.succeeds(["image", "exists", name]).await? {
            return Ok(None);
        }
        let id = self
            .output(["image", "inspect", "--format", "{{.Id}}", name])
            .await?;
        Ok(Some(id.trim().to_string()))
    }

    /// The ids of the images without a name that no other image is built on.
    pub async fn dangling_images(&self) -> anyhow::Result<Vec<String>> {
        let ids = self
            .output([
                "images",
                "--quiet",
                "--no-trunc",
                "--filter",
                "dangling=true",
            ])
            .await?;
        Ok(ids.lines().map(str::to_string).collect())
    }

    /// `podman ps -a` of the containers labelled `key=value`.
    pub async fn containers(&self, labels: &[(&str, &str)]) -> anyhow::Result<Vec<Container>> {
        let mut args = vec![
            "ps".to_string(),
            "-a".into(),
            "--format".into(),
            "json".into(),
        ];
        for (k, v) in labels {
            args.push("--filter".into());
            args.push(format!("label={k}={v}"));
        }
        let json = self.output(&args).await?;
        let list: Vec<Value> = serde_json::from_str(json.trim())
            .with_context(|| format!("podman ps printed no JSON list: {json}"))?;
        Ok(list.iter().map(Container::from_ps).collect())
    }

    /// Runs the container's healthcheck (the compose file's `test`) once:
    /// podman schedules healthchecks with systemd timers, and no systemd
    /// runs here.
    pub async fn healthy(&self, container: &str) -> anyhow::Result<bool> {
        self.succeeds(["healthcheck", "run", container]).await
    }

    pub async fn inspect(&self, container: &str, format: &str) -> anyhow::Result<String> {
        Ok(self
            .output(["container", "inspect", "--format", format, container])
            .await?
            .trim()
            .to_string())
    }
}

/// A container as `podman ps -a --format json` lists it.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub running: bool,
    /// `com.docker.compose.container-number`: a replica's number.
    pub number: u32,
}

impl Container {
    fn from_ps(v: &Value) -> Container {
        Container {
            id: v["Id"].as_str().unwrap_or_default().to_string(),
            name: v["Names"][0].as_str().unwrap_or_default().to_string(),
            running: v["State"].as_str() == Some("running"),
            number: v["Labels"]["com.docker.compose.container-number"]
                .as_str()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        }
    }
}

/// One compose project of `docker-compose.yml`, run with podman-compose in
/// the repository's root. Dropping it takes the project down (volumes too),
/// whatever happened.
pub struct Compose {
    pub podman: Podman,
    program: PathBuf,
    root: PathBuf,
    pub project: String,
    env: Vec<(String, String)>,
    down: AtomicBool,
}

impl Compose {
    /// Takes down what a run that died left of `project` first.
    pub async fn new(
        podman: Podman,
        program: PathBuf,
        root: &Path,
        project: &str,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Compose> {
        let compose = Compose {
            podman,
            program,
            root: root.to_path_buf(),
            project: project.to_string(),
            env,
            down: AtomicBool::new(false),
        };
        run(&mut compose.command(["version"]))
            .await
            .with_context(|| {
                format!(
                    "{} does not run: `deploy/test.sh` installs podman-compose into its Python virtualenv",
                    compose.program.display()
                )
            })?;
        compose.down_blocking()?;
        compose.down.store(false, Ordering::SeqCst);
        Ok(compose)
    }

    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::from(self.blocking_command(args));
        cmd.kill_on_drop(true);
        cmd
    }

    /// The compose program on this project, with `args` (blocking: for
    /// `Drop`, where no runtime may be running).
    fn blocking_command<I, S>(&self, args: I) -> std::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = std::process::Command::new(&self.program);
        cmd.current_dir(&self.root)
            .env("CONTAINERS_CONF", self.podman.conf())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args([
                "--project-name",
                &self.project,
                "--file",
                "docker-compose.yml",
            ])
            .args(args);
        cmd
    }

    /// `podman-compose args…`'s stdout.
    pub async fn run<I, S>(&self, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(&mut self.command(args)).await
    }

    /// The project's containers of `service`, by replica number.
    pub async fn containers(&self, service: &str) -> anyhow::Result<Vec<Container>> {
        let mut list = self
            .podman
            .containers(&[
                ("com.docker.compose.project", &self.project),
                ("com.docker.compose.service", service),
            ])
            .await?;
        list.sort_by_key(|c| c.number);
        Ok(list)
    }

    /// The one container of `service`.
    pub async fn container(&self, service: &str) -> anyhow::Result<Container> {
        let list = self.containers(service).await?;
        match list.as_slice() {
            [one] => Ok(one.clone()),
            other => anyhow::bail!("{service}: expected one container, found {other:?}"),
        }
    }

    /// What the project's containers said last, to explain a failure.
    pub fn diagnostics(&self) -> String {
        let podman = |args: &[&str]| {
            std::process::Command::new("podman")
                .env("CONTAINERS_CONF", self.podman.conf())
                .args(args)
                .stdin(Stdio::null())
                .output()
                .map(|o| {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                })
                .unwrap_or_else(|e| format!("podman: {e}"))
        };
        let label = format!("label=com.docker.compose.project={}", self.project);
        let mut text = podman(&["ps", "-a", "--filter", &label]);
        for name in podman(&["ps", "-a", "--format", "{{.Names}}", "--filter", &label]).lines() {
            text.push_str(&format!("\n--- {name} (last lines)\n"));
            text.push_str(&podman(&["logs", "--tail", "25", name]));
        }
        text
    }

    /// `down --volumes`, then whatever podman-compose left of the project
    /// (containers of replicas it no longer knows of, volumes, its network);
    /// checks nothing is left.
    pub fn down_blocking(&self) -> anyhow::Result<()> {
        if self.down.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let podman = |args: &[&str]| {
            std::process::Command::new("podman")
                .env("CONTAINERS_CONF", self.podman.conf())
                .args(args)
                .stdin(Stdio::null())
                .output()
        };
        let label = format!("label=com.docker.compose.project={}", self.project);
        let compose_down = self
            .blocking_command(["down", "--volumes", "--timeout", "10"])
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_else(|e| e.to_string());
        let ids = |what: &[&str]| -> Vec<String> {
            podman(what)
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let containers = ids(&["ps", "-a", "--quiet", "--filter", &label]);
        if !containers.is_empty() {
            let mut args = vec!["rm", "--force", "--volumes", "--time", "5"];
            args.extend(containers.iter().map(String::as_str));
            let _ = podman(&args);
        }
        let volumes = ids(&["volume", "ls", "--quiet", "--filter", &label]);
        if !volumes.is_empty() {
            let mut args = vec!["volume", "rm", "--force"];
            args.extend(volumes.iter().map(String::as_str));
            let _ = podman(&args);
        }
        let network = format!("{}_default", self.project);
        if podman(&["network", "exists", &network]).is_ok_and(|o| o.status.success()) {
            let _ = podman(&["network", "rm", "--force", &network]);
        }
        let left: Vec<String> = [
            ids(&["ps", "-a", "--format", "{{.Names}}", "--filter", &label]),
            ids(&["volume", "ls", "--quiet", "--filter", &label]),
        ]
        .concat();
        ensure!(
            left.is_empty(),
            "{} down left {left:?} behind; podman-compose down said:\n{compose_down}",
            self.project
        );
        Ok(())
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if let Err(e) = self.down_blocking() {
            eprintln!("cleaning up the compose project: {e:#}");
        }
    }
}
