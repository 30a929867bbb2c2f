//! `docker-compose.yml` and `deploy/Dockerfile` read against the workspace
//! (`compose_up` runs them, on podman, with stand-ins for what cannot be
//! pulled here; these checks also cover what it cannot: the cargo build
//! stage, and the files as docker compose would read them): every service
//! runs a workspace binary that the image builds and ships, with
//! configuration files the image contains, sets only real `ORQ_*` keys,
//! waits for healthy infrastructure it is wired to, and the bot-agent scales
//! into distinct bots and is given the time to drain when stopped.
//!
//! Each check collects every problem it finds, so one run names all of them;
//! `broken_files_are_reported` breaks copies of the files and proves the
//! checks notice.

use orq_shared::config::{Settings, env_keys};
use serde_yaml::Value;
use std::path::{Path, PathBuf};

/// The Orquestra services; each is named after the binary it runs.
const BINARIES: [&str; 4] = ["gateway", "dispatcher", "timeout-reaper", "bot-agent"];
const INFRA: [&str; 2] = ["postgres", "rabbitmq"];
const DOCKERFILE: &str = "deploy/Dockerfile";
/// Programs every Debian image has without installing anything.
const BASE_PROGRAMS: [&str; 3] = ["sh", "bash", "env"];

fn repo_root() -> PathBuf {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    std::fs::canonicalize(&root).unwrap_or(root)
}

/// The files under test, loaded once per test so a test may break a copy.
#[derive(Clone)]
struct Repo {
    root: PathBuf,
    compose: Value,
    dockerfile: String,
    cargo_toml: String,
}

impl Repo {
    fn load() -> Repo {
        let root = repo_root();
        let read = |rel: &str| {
            std::fs::read_to_string(root.join(rel))
                .unwrap_or_else(|e| panic!("cannot read {rel} in the repository: {e}"))
        };
        let mut compose: Value = serde_yaml::from_str(&read("docker-compose.yml"))
            .unwrap_or_else(|e| panic!("docker-compose.yml is not valid YAML: {e}"));
        // serde_yaml 0.9 leaves `<<: *anchor` alone until asked.
        compose.apply_merge().unwrap_or_else(|e| {
            panic!("docker-compose.yml: a `<<:` merge key does not resolve: {e}")
        });
        Repo {
            compose,
            dockerfile: read(DOCKERFILE),
            cargo_toml: read("Cargo.toml"),
            root,
        }
    }

    fn service(&self, name: &str) -> &Value {
        &self.compose["services"][name]
    }

    fn image(&self) -> Image {
        Image::parse(&self.dockerfile)
    }

    /// `[workspace] members` of the root Cargo.toml.
    fn members(&self) -> Vec<String> {
        workspace_members(&self.cargo_toml)
    }
}

fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    );
}

// ---------------------------------------------------------------- Cargo.toml

/// The workspace's `Cargo.toml`, parsed.
fn cargo_manifest(text: &str) -> toml::Table {
    text.parse().expect("Cargo.toml is valid TOML")
}

/// `[workspace] members`.
fn workspace_members(text: &str) -> Vec<String> {
    cargo_manifest(text)["workspace"]["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `[workspace.package] rust-version`.
fn workspace_rust_version(text: &str) -> Option<String> {
    cargo_manifest(text)["workspace"]
        .get("package")?
        .get("rust-version")?
        .as_str()
        .map(str::to_string)
}

// ---------------------------------------------------------------- Dockerfile

#[derive(Debug, Clone)]
struct Instruction {
    op: String,
    args: String,
}

impl Instruction {
    fn tokens(&self) -> Vec<&str> {
        self.args.split_whitespace().collect()
    }

    /// COPY/ADD: (flags, sources, destination).
    fn copy_parts(&self) -> (Vec<&str>, Vec<&str>, Option<&str>) {
        let tokens = self.tokens();
        let (flags, mut paths): (Vec<&str>, Vec<&str>) =
            tokens.into_iter().partition(|t| t.starts_with("--"));
        let dest = paths.pop();
        (flags, paths, dest)
    }
}

/// What the Dockerfile builds and what its final stage contains.
#[derive(Debug, Default)]
struct Image {
    /// The image of each `FROM`, in order, global ARGs at their defaults.
    froms: Vec<String>,
    /// Each stage's `AS` name.
    stage_names: Vec<Option<String>>,
    /// The stage that RUNs `cargo build`.
    cargo_stage: Option<usize>,
    /// The stage the final stage copies /usr/local/bin's binaries from.
    binaries_from: Option<String>,
    /// The tokens of the build stage's `RUN ... cargo build ...`.
    cargo_run: Vec<String>,
    /// Sources the build stage copies from the context.
    build_sources: Vec<String>,
    /// Binaries the final stage copies into /usr/local/bin from another stage.
    shipped_binaries: Vec<String>,
    /// (path in the image, path in the repository) the final stage copies.
    shipped_paths: Vec<(String, String)>,
    /// Packages the final stage installs with apt-get.
    packages: Vec<String>,
    workdir: Option<String>,
    user: Option<String>,
}

/// `${NAME}` and `$NAME` replaced by the ARG defaults in `args`.
fn substitute(text: &str, args: &[(String, String)]) -> String {
    let mut out = text.to_string();
    for (name, value) in args {
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    out
}

/// Logical instructions: continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        let (body, continues) = match trimmed.strip_suffix('\\') {
            Some(body) => (body, true),
            None => (trimmed, false),
        };
        current.push_str(body);
        current.push(' ');
        if !continues {
            let logical = current.trim().to_string();
            current.clear();
            if logical.is_empty() {
                continue;
            }
            let (op, args) = logical
                .split_once(char::is_whitespace)
                .unwrap_or((&logical, ""));
            out.push(Instruction {
                op: op.to_uppercase(),
                args: args.trim().to_string(),
            });
        }
    }
    out
}

impl Image {
    fn parse(text: &str) -> Image {
        let mut stages: Vec<Vec<Instruction>> = Vec::new();
        let mut image = Image::default();
        // ARGs before the first FROM, as their defaults: what FROM sees.
        let mut global_args: Vec<(String, String)> = Vec::new();
        for instruction in instructions(text) {
            if instruction.op == "FROM" {
                let tokens = instruction.tokens();
                let mut words = tokens.iter().filter(|t| !t.starts_with("--"));
                let from = words.next().copied().unwrap_or_default();
                let name = match (words.next(), words.next()) {
                    (Some(as_), Some(name)) if as_.eq_ignore_ascii_case("as") => {
                        Some(name.to_string())
                    }
                    _ => None,
                };
                image.froms.push(substitute(from, &global_args));
                image.stage_names.push(name);
                stages.push(Vec::new());
            } else if let Some(stage) = stages.last_mut() {
                stage.push(instruction);
            } else if instruction.op == "ARG" {
                let (name, default) = instruction
                    .args
                    .split_once('=')
                    .unwrap_or((&instruction.args, ""));
                global_args.push((name.trim().to_string(), default.trim().to_string()));
            }
        }
        let last = stages.len().saturating_sub(1);
        for (index, stage) in stages.iter().enumerate() {
            let builds = stage
                .iter()
                .find(|i| i.op == "RUN" && i.args.contains("cargo build"));
            if let Some(run) = builds {
                image.cargo_stage = Some(index);
                image.cargo_run = run.tokens().into_iter().map(str::to_string).collect();
                for copy in stage.iter().filter(|i| i.op == "COPY" || i.op == "ADD") {
                    let (flags, sources, _) = copy.copy_parts();
                    if !flags.iter().any(|f| f.starts_with("--from")) {
                        image
                            .build_sources
                            .extend(sources.iter().map(|s| s.trim_end_matches('/').to_string()));
                    }
                }
            }
            if index != last {
                continue;
            }
            for instruction in stage {
                match instruction.op.as_str() {
                    "COPY" | "ADD" => {
                        let (flags, sources, dest) = instruction.copy_parts();
                        let Some(dest) = dest else { continue };
                        if let Some(from) = flags.iter().find_map(|f| f.strip_prefix("--from=")) {
                            if dest.starts_with("/usr/local/bin") {
                                image.binaries_from = Some(from.to_string());
                                image.shipped_binaries.extend(
                                    sources
                                        .iter()
                                        .filter_map(|s| s.rsplit('/').next())
                                        .map(str::to_string),
                                );
                            }
                        } else if let [source] = sources.as_slice() {
                            image.shipped_paths.push((
                                dest.trim_end_matches('/').to_string(),
                                source.trim_end_matches('/').to_string(),
                            ));
                        }
                    }
                    "RUN" => {
                        let tokens = instruction.tokens();
                        for (at, _) in tokens
                            .windows(2)
                            .enumerate()
                            .filter(|(_, w)| w[0] == "apt-get" && w[1] == "install")
                        {
                            image.packages.extend(
                                tokens[at + 2..]
                                    .iter()
                                    .take_while(|t| !matches!(**t, "&&" | ";" | "||"))
                                    .filter(|t| !t.starts_with('-'))
                                    .map(|t| t.to_string()),
                            );
                        }
                    }
                    "WORKDIR" => image.workdir = Some(instruction.args.clone()),
                    "USER" => image.user = Some(instruction.args.clone()),
                    _ => {}
                }
            }
        }
        image
    }

    /// The stage the binaries come from when no build argument is given,
    /// following stages that only rename another (`FROM ${ARG} AS name`).
    fn default_binaries_stage(&self) -> Option<usize> {
        let mut name = self.binaries_from.clone()?;
        for _ in 0..self.froms.len() {
            let index = self
                .stage_names
                .iter()
                .position(|n| n.as_deref() == Some(name.as_str()))?;
            let from = &self.froms[index];
            if self
                .stage_names
                .iter()
                .any(|n| n.as_deref() == Some(from.as_str()))
            {
                name = from.clone();
            } else {
                return Some(index);
            }
        }
        None
    }

    /// The repository file that ends up at `path` in the image (relative
    /// paths start at the final WORKDIR).
    fn in_repo(&self, root: &Path, path: &str) -> Result<PathBuf, String> {
        let absolute = if path.starts_with('/') {
            path.to_string()
        } else {
            let workdir = self.workdir.as_deref().unwrap_or("/");
            format!(
                "{}/{}",
                workdir.trim_end_matches('/'),
                path.trim_start_matches("./")
            )
        };
        for (dest, source) in &self.shipped_paths {
            if absolute == *dest {
                return Ok(root.join(source));
            }
            if let Some(rest) = absolute.strip_prefix(&format!("{dest}/")) {
                return Ok(root.join(source).join(rest));
            }
        }
        let shipped: Vec<&str> = self.shipped_paths.iter().map(|(d, _)| d.as_str()).collect();
        Err(format!(
            "{path} is not in the image: the runtime stage of {DOCKERFILE} copies only {shipped:?} from the repository"
        ))
    }

    fn has_program(&self, program: &str) -> bool {
        BASE_PROGRAMS.contains(&program)
            || self.packages.iter().any(|p| p == program)
            || self.shipped_binaries.iter().any(|b| b == program)
    }
}

fn check_dockerfile(repo: &Repo) -> Vec<String> {
    let mut problems = Vec::new();
    let image = repo.image();
    if image.froms.len() < 2 {
        problems.push(format!(
            "{DOCKERFILE} has {} FROM stage(s); a multi-stage build (builder + slim runtime) needs at least 2",
            image.froms.len()
        ));
    }
    let rust_version = workspace_rust_version(&repo.cargo_toml).unwrap_or_default();
    let builder = image.froms.first().cloned().unwrap_or_default();
    if !builder.starts_with(&format!("rust:{rust_version}")) {
        problems.push(format!(
            "{DOCKERFILE}: the builder stage is FROM {builder:?}, not the workspace's rust-version {rust_version} (rust:{rust_version}-...)"
        ));
    }
    let runtime = image.froms.last().cloned().unwrap_or_default();
    // The binaries link against the builder's glibc: same Debian release.
    if let Some(release) = builder.rsplit('-').next().filter(|_| builder.contains('-'))
        && !runtime.contains(release)
    {
        problems.push(format!(
            "{DOCKERFILE}: the runtime stage is FROM {runtime:?} but the binaries are built on {builder:?}; use the same Debian release ({release}) so glibc matches"
        ));
    }
    if image.cargo_run.is_empty() {
        problems.push(format!("{DOCKERFILE}: no stage RUNs `cargo build`"));
    } else if image.default_binaries_stage() != image.cargo_stage {
        problems.push(format!(
            "{DOCKERFILE}: without build arguments the runtime stage's binaries come from stage {:?} (--from={:?}), not the stage that RUNs `cargo build`",
            image
                .default_binaries_stage()
                .map(|i| image.stage_names[i].clone().unwrap_or_else(|| i.to_string())),
            image.binaries_from
        ));
    }
    // Only the `cargo build ...` command itself: `mkdir -p` is no package.
    let cargo: Vec<String> = image
        .cargo_run
        .iter()
        .skip_while(|t| *t != "cargo")
        .take_while(|t| !matches!(t.as_str(), "&&" | ";" | "||"))
        .cloned()
        .collect();
    for flag in ["--release", "--locked"] {
        if !cargo.is_empty() && !cargo.iter().any(|t| t == flag) {
            problems.push(format!("{DOCKERFILE}: `cargo build` lacks {flag}"));
        }
    }
    let built: Vec<&str> = cargo
        .windows(2)
        .filter(|w| w[0] == "-p" || w[0] == "--package")
        .map(|w| w[1].as_str())
        .collect();
    let target_is_cache = image.cargo_run.iter().any(|t| {
        t.starts_with("--mount=type=cache") && t.contains("target=") && t.ends_with("/target")
    });
    for bin in BINARIES {
        if !built.contains(&bin) {
            problems.push(format!(
                "{DOCKERFILE}: `cargo build` does not build {bin} (no `-p {bin}`; it builds {built:?})"
            ));
        }
        if target_is_cache
            && !image
                .cargo_run
                .iter()
                .any(|t| t.ends_with(&format!("target/release/{bin}")))
        {
            problems.push(format!(
                "{DOCKERFILE}: target/ is a cache mount, which is gone after the RUN, and that RUN does not copy target/release/{bin} out"
            ));
        }
        if !image.shipped_binaries.iter().any(|b| b == bin) {
            problems.push(format!(
                "{DOCKERFILE}: the runtime stage does not COPY --from the build stage a {bin} binary into /usr/local/bin (it ships {:?})",
                image.shipped_binaries
            ));
        }
    }
    // cargo loads the whole workspace: every member must be in the build stage.
    let copies_everything = image.build_sources.iter().any(|s| s == ".");
    if !copies_everything {
        let needed = ["Cargo.toml".to_string(), "Cargo.lock".to_string()]
            .into_iter()
            .chain(repo.members());
        for path in needed {
            if !image.build_sources.contains(&path) {
                problems.push(format!(
                    "{DOCKERFILE}: the build stage does not COPY {path}, which cargo needs to load the workspace"
                ));
            }
        }
    }
    for package in ["ca-certificates", "python3", "curl"] {
        if !image.packages.iter().any(|p| p == package) {
            problems.push(format!(
                "{DOCKERFILE}: the runtime stage does not apt-get install {package} (it installs {:?})",
                image.packages
            ));
        }
    }
    match image.user.as_deref() {
        None => problems.push(format!(
            "{DOCKERFILE}: the runtime stage has no USER, so the services run as root"
        )),
        Some(user) if user == "root" || user == "0" || user.starts_with("0:") => problems.push(
            format!("{DOCKERFILE}: the runtime stage runs as USER {user}, not a non-root user"),
        ),
        Some(_) => {}
    }
    if image.workdir.as_deref() != Some("/app") {
        problems.push(format!(
            "{DOCKERFILE}: the runtime WORKDIR is {:?}, not /app (agent.toml's relative automation paths start there)",
            image.workdir
        ));
    }
    if !image
        .shipped_paths
        .iter()
        .any(|(dest, source)| dest == "/app/examples" && source == "examples")
    {
        problems.push(format!(
            "{DOCKERFILE}: the runtime stage does not `COPY examples /app/examples` (the demo configuration and automation)"
        ));
    }
    problems
}

// ---------------------------------------------------------------- compose

fn argv(value: &Value) -> Vec<String> {
    match value {
        Value::Sequence(items) => items.iter().map(scalar).collect(),
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// A service's environment, from the map or the `KEY=value` list form; a key
/// without a value (passed through from the host) has `None`.
fn environment(service: &Value) -> Vec<(String, Option<String>)> {
    match &service["environment"] {
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| (scalar(k), (!v.is_null()).then(|| scalar(v))))
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .map(scalar)
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (kv, None),
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn env_value(env: &[(String, Option<String>)], key: &str) -> Option<String> {
    env.iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.clone())
}

/// `scheme://user:password@host:port/path?query`, loosely.
#[derive(Debug, Default, PartialEq)]
struct Url {
    user: Option<String>,
    password: Option<String>,
    host_port: String,
    path: String,
}

fn parse_url(url: &str) -> Option<Url> {
    let (_, rest) = url.split_once("://")?;
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((auth, rest)) => (Some(auth), rest),
        None => (None, rest),
    };
    let (host_port, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path = path.split('?').next().unwrap_or_default().to_string();
    let (user, password) = match auth.map(|a| a.split_once(':').unwrap_or((a, ""))) {
        Some((u, p)) => (Some(u.to_string()), (!p.is_empty()).then(|| p.to_string())),
        None => (None, None),
    };
    Some(Url {
        user,
        password,
        host_port: host_port.to_string(),
        path,
    })
}

/// (container port, host port) of each `ports:` entry.
fn ports(service: &Value) -> Vec<(String, Option<String>)> {
    let Some(items) = service["ports"].as_sequence() else {
        return Vec::new();
    };
    items
        .iter()
        .map(|item| match item {
            Value::Mapping(_) => {
                let published = &item["published"];
                (
                    scalar(&item["target"]),
                    (!published.is_null()).then(|| scalar(published)),
                )
            }
            other => {
                let text = with_defaults(&scalar(other));
                let text = text.split('/').next().unwrap_or_default().to_string();
                let mut parts: Vec<&str> = text.rsplitn(3, ':').collect();
                let container = parts.remove(0).to_string();
                let host = parts.first().map(|h| h.to_string());
                (container, host)
            }
        })
        .collect()
}

/// The variables compose interpolates in `text`, with the operator each is
/// used with (`:-`, `:?`, ...), and the offsets of `$` that are neither `$$`
/// nor a variable.
fn interpolations(text: &str) -> (Vec<(String, String)>, Vec<usize>) {
    let bytes = text.as_bytes();
    let mut vars = Vec::new();
    let mut bad = Vec::new();
    let mut i = 0;
    let is_name = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        match bytes.get(i + 1) {
            Some(b'$') => i += 2,
            Some(b'{') => {
                let mut depth = 0;
                let mut end = None;
                for (j, b) in bytes.iter().enumerate().skip(i + 1) {
                    match b {
                        b'{' => depth += 1,
                        b'}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = Some(j);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let Some(end) = end else {
                    bad.push(i);
                    break;
                };
                let inner = &text[i + 2..end];
                let name_len = inner.bytes().take_while(|b| is_name(*b)).count();
                if name_len == 0 {
                    bad.push(i);
                } else {
                    let op: String = inner[name_len..]
                        .chars()
                        .take_while(|c| matches!(c, ':' | '-' | '?' | '+'))
                        .collect();
                    vars.push((inner[..name_len].to_string(), op));
                    // Nested defaults (`${A:-${B}}`) are variables too.
                    let (nested, nested_bad) = interpolations(&inner[name_len..]);
                    vars.extend(nested);
                    bad.extend(nested_bad.into_iter().map(|o| o + i + 2 + name_len));
                }
                i = end + 1;
            }
            Some(b) if b.is_ascii_alphabetic() || *b == b'_' => {
                let len = bytes[i + 1..].iter().take_while(|b| is_name(**b)).count();
                vars.push((text[i + 1..i + 1 + len].to_string(), String::new()));
                i += 1 + len;
            }
            _ => {
                bad.push(i);
                i += 1;
            }
        }
    }
    (vars, bad)
}

/// `text` as compose makes it when none of its variables is set: `${VAR:-x}`
/// and `${VAR-x}` become `x`, other variables nothing, `$$` a `$`.
fn with_defaults(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if rest.starts_with("${") {
            // The matching brace: defaults may hold variables themselves.
            let mut depth = 0;
            let end = rest
                .char_indices()
                .find(|(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    *c == '}' && depth == 0
                })
                .map(|(i, _)| i)
                .unwrap_or(rest.len() - 1);
            let inner = &rest[2..end];
            let name_len = inner
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            let op = &inner[name_len..];
            if let Some(default) = op.strip_prefix(":-").or_else(|| op.strip_prefix('-')) {
                out.push_str(&with_defaults(default));
            }
            rest = &rest[end + 1..];
        } else {
            let name_len = rest[1..]
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            if name_len == 0 {
                out.push('$');
            }
            rest = &rest[1 + name_len..];
        }
    }
    out.push_str(rest);
    out
}

/// Every string value in the document with its path, as compose interpolates
/// values (not keys).
fn strings(value: &Value, path: String, out: &mut Vec<(String, String)>) {
    match value {
        Value::String(s) => out.push((path, s.clone())),
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                strings(item, format!("{path}[{i}]"), out);
            }
        }
        Value::Mapping(m) => {
            for (k, v) in m {
                let key = scalar(k);
                let path = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                strings(v, path, out);
            }
        }
        _ => {}
    }
}

fn check_interpolation(repo: &Repo, problems: &mut Vec<String>) {
    let mut values = Vec::new();
    strings(&repo.compose, String::new(), &mut values);
    for (path, text) in values {
        let (vars, bad) = interpolations(&text);
        for offset in bad {
            problems.push(format!(
                "docker-compose.yml {path}: the `$` at offset {offset} of {text:?} is neither `$$` nor `${{VAR}}`, and compose interpolates `$`"
            ));
        }
        for (var, op) in vars {
            if op.contains('?') {
                problems.push(format!(
                    "docker-compose.yml {path}: ${{{var}{op}...}} makes {var} required, but compose interpolates the whole file for every command, so `docker compose up gateway` and `exec gateway gateway admin create-token` (which make the bot token) would fail too; use ${{{var}:-}}"
                ));
            }
        }
    }
}

/// Paths a service's command and environment hand to `--config`/ORQ_CONFIG.
fn config_paths(args: &[String], env: &[(String, Option<String>)]) -> Vec<String> {
    let mut paths: Vec<String> = args
        .windows(2)
        .filter(|w| w[0] == "--config")
        .map(|w| w[1].clone())
        .collect();
    paths.extend(
        args.iter()
            .filter_map(|a| a.strip_prefix("--config="))
            .map(str::to_string),
    );
    paths.extend(env_value(env, "ORQ_CONFIG"));
    paths
}

fn check_compose(repo: &Repo) -> Vec<String> {
    let mut problems = Vec::new();
    let image = repo.image();
    let keys = env_keys();
    let members = repo.members();

    if repo.compose["services"].as_mapping().is_none() {
        return vec!["docker-compose.yml has no `services:` mapping".to_string()];
    }
    for name in INFRA.iter().chain(BINARIES.iter()) {
        if repo.service(name).is_null() {
            problems.push(format!("service {name} is missing from docker-compose.yml"));
        }
    }
    for name in INFRA {
        let health = &repo.service(name)["healthcheck"];
        if health["test"].is_null() || health["disable"].as_bool() == Some(true) {
            problems.push(format!(
                "{name} has no healthcheck (healthcheck.test), so `condition: service_healthy` on it never holds"
            ));
        }
    }

    // What postgres and rabbitmq accept, to compare with the URLs.
    let pg_env = environment(repo.service("postgres"));
    let pg_user = env_value(&pg_env, "POSTGRES_USER").unwrap_or_else(|| "postgres".into());
    let pg_db = env_value(&pg_env, "POSTGRES_DB").unwrap_or_else(|| pg_user.clone());
    let pg_password = env_value(&pg_env, "POSTGRES_PASSWORD");
    let pg_trust = env_value(&pg_env, "POSTGRES_HOST_AUTH_METHOD").as_deref() == Some("trust");
    if !repo.service("postgres").is_null() && pg_password.is_none() && !pg_trust {
        problems.push(
            "postgres sets neither POSTGRES_PASSWORD nor POSTGRES_HOST_AUTH_METHOD=trust: the postgres image refuses to start"
                .to_string(),
        );
    }
    let mq_env = environment(repo.service("rabbitmq"));
    let mq_user = env_value(&mq_env, "RABBITMQ_DEFAULT_USER").unwrap_or_else(|| "guest".into());
    let mq_password = env_value(&mq_env, "RABBITMQ_DEFAULT_PASS").unwrap_or_else(|| "guest".into());

    let mut images = Vec::new();
    for name in BINARIES {
        let service = repo.service(name);
        if service.is_null() {
            continue;
        }
        images.push((name, scalar(&service["image"])));

        let build = &service["build"];
        let context = scalar(&build["context"]);
        let dockerfile = scalar(&build["dockerfile"]);
        if !matches!(context.as_str(), "." | "./") || dockerfile != DOCKERFILE {
            problems.push(format!(
                "{name} builds context {context:?} with dockerfile {dockerfile:?}, not context \".\" with {DOCKERFILE}"
            ));
        } else if !repo.root.join(&dockerfile).exists() {
            problems.push(format!("{name} builds {dockerfile}, which does not exist"));
        }
        if scalar(&service["restart"]) != "unless-stopped" {
            problems.push(format!(
                "{name} has restart: {:?}, not unless-stopped",
                scalar(&service["restart"])
            ));
        }
        if !service["entrypoint"].is_null() {
            problems.push(format!(
                "{name} sets an entrypoint, so the first word of its command is no longer the binary"
            ));
        }

        let args = argv(&service["command"]);
        let binary = args.first().cloned().unwrap_or_default();
        if binary.is_empty() {
            problems.push(format!("{name} has no command (which binary it runs)"));
        } else if binary != name {
            problems.push(format!("service {name} runs {binary:?}, not {name}"));
        }
        if !binary.is_empty() {
            if !members.contains(&binary) || !repo.root.join(&binary).join("src/main.rs").exists() {
                problems.push(format!(
                    "{name} runs {binary:?}, which is not a workspace binary: no workspace member {binary}/ with src/main.rs"
                ));
            }
            if !image.shipped_binaries.contains(&binary) {
                problems.push(format!(
                    "{name} runs {binary:?}, which {DOCKERFILE} does not copy into /usr/local/bin"
                ));
            }
        }

        let env = environment(service);
        for path in config_paths(&args, &env) {
            match image.in_repo(&repo.root, &path) {
                Err(e) => problems.push(format!("{name}: --config {e}")),
                Ok(file) if !file.is_file() => problems.push(format!(
                    "{name}: --config {path} is {}, which does not exist in the repository",
                    file.display()
                )),
                Ok(file) => match Settings::load(Some(&file)) {
                    Err(e) => problems.push(format!(
                        "{name}: --config {path} ({}) does not load: {e}",
                        file.display()
                    )),
                    Ok(_) if binary == "bot-agent" => {
                        problems.extend(check_systems(repo, &file));
                    }
                    Ok(_) => {}
                },
            }
        }

        if env.is_empty() {
            problems.push(format!("{name} has no environment"));
        }
        for (key, _) in env.iter().filter(|(k, _)| k.starts_with("ORQ_")) {
            // ORQ_CONFIG is the --config flag's variable, not a settings key.
            if key == "ORQ_CONFIG" || keys.contains(key) {
                continue;
            }
            let section = key
                .strip_prefix("ORQ_")
                .and_then(|k| k.split_once("__"))
                .map(|(s, _)| format!("ORQ_{s}__"))
                .unwrap_or_default();
            let siblings: Vec<&String> = keys
                .iter()
                .filter(|k| !section.is_empty() && k.starts_with(&section))
                .collect();
            problems.push(format!(
                "{name} sets {key}, which is not a configuration key (orq_shared::config::env_keys(); {section}* keys are {siblings:?})"
            ));
        }
        match env_value(&env, "ORQ_DATABASE__URL")
            .as_deref()
            .map(parse_url)
        {
            None => problems.push(format!("{name} does not set ORQ_DATABASE__URL")),
            Some(None) => problems.push(format!("{name}: ORQ_DATABASE__URL is not a URL")),
            Some(Some(url)) => {
                if url.host_port != "postgres:5432" {
                    problems.push(format!(
                        "{name}: ORQ_DATABASE__URL points at {}, not the postgres service (postgres:5432)",
                        url.host_port
                    ));
                }
                if url.path != pg_db {
                    problems.push(format!(
                        "{name}: ORQ_DATABASE__URL names database {:?}, but postgres creates POSTGRES_DB {pg_db:?}",
                        url.path
                    ));
                }
                if url.user.as_deref().unwrap_or("postgres") != pg_user {
                    problems.push(format!(
                        "{name}: ORQ_DATABASE__URL logs in as {:?}, but postgres's POSTGRES_USER is {pg_user:?}",
                        url.user
                    ));
                }
                if !pg_trust && url.password != pg_password {
                    problems.push(format!(
                        "{name}: ORQ_DATABASE__URL's password is not postgres's POSTGRES_PASSWORD (and POSTGRES_HOST_AUTH_METHOD is not trust)"
                    ));
                }
            }
        }
        match env_value(&env, "ORQ_AMQP__URL").as_deref().map(parse_url) {
            None => problems.push(format!("{name} does not set ORQ_AMQP__URL")),
            Some(None) => problems.push(format!("{name}: ORQ_AMQP__URL is not a URL")),
            Some(Some(url)) => {
                if url.host_port != "rabbitmq:5672" {
                    problems.push(format!(
                        "{name}: ORQ_AMQP__URL points at {}, not the rabbitmq service (rabbitmq:5672)",
                        url.host_port
                    ));
                }
                if url.user.as_deref() != Some(&mq_user)
                    || url.password.as_deref() != Some(&mq_password)
                {
                    problems.push(format!(
                        "{name}: ORQ_AMQP__URL's credentials are not rabbitmq's ({mq_user}:<password>)"
                    ));
                }
            }
        }
        if env_value(&env, "ORQ_LOG__FORMAT").as_deref() != Some("json") {
            problems.push(format!("{name}: ORQ_LOG__FORMAT is not json"));
        }

        let depends = &service["depends_on"];
        if depends.is_sequence() {
            problems.push(format!(
                "{name}: depends_on is a list, which waits for containers to start, not to be healthy; use `NAME: {{condition: service_healthy}}`"
            ));
        }
        for dep in INFRA {
            if depends[dep]["condition"].as_str() != Some("service_healthy") {
                problems.push(format!(
                    "{name} must wait for {dep} to be healthy: depends_on.{dep}.condition is {:?}, not service_healthy",
                    depends[dep]["condition"].as_str()
                ));
            }
        }
    }
    let first = images.first().map(|(_, i)| i.clone()).unwrap_or_default();
    if first.is_empty() {
        problems.push(format!(
            "{} sets no image:, so each service builds its own copy of the same image",
            BINARIES[0]
        ));
    }
    for (name, other) in &images {
        if *other != first {
            problems.push(format!(
                "{name} uses image {other:?} but {} uses {first:?}: one image serves all four services",
                BINARIES[0]
            ));
        }
    }

    check_gateway(repo, &image, &mut problems);
    check_bot_agent(repo, &mut problems);
    check_interpolation(repo, &mut problems);
    problems
}

/// The port ORQ_GATEWAY__LISTEN binds inside the container.
fn gateway_port(repo: &Repo) -> Option<String> {
    let listen = env_value(&environment(repo.service("gateway")), "ORQ_GATEWAY__LISTEN")?;
    listen.rsplit_once(':').map(|(_, p)| p.to_string())
}

fn check_gateway(repo: &Repo, image: &Image, problems: &mut Vec<String>) {
    let gateway = repo.service("gateway");
    if gateway.is_null() {
        return;
    }
    let listen = env_value(&environment(gateway), "ORQ_GATEWAY__LISTEN");
    let host = listen
        .as_deref()
        .and_then(|l| l.rsplit_once(':'))
        .map(|(h, _)| h.to_string());
    if !matches!(host.as_deref(), Some("0.0.0.0" | "[::]")) {
        problems.push(format!(
            "gateway: ORQ_GATEWAY__LISTEN is {listen:?}; inside a container it must listen on 0.0.0.0 to be reachable (default 127.0.0.1:8080 is not)"
        ));
    }
    let port = gateway_port(repo).unwrap_or_default();
    let published = ports(gateway);
    if !published.iter().any(|(container, host)| {
        *container == port && host.as_deref().is_some_and(|h| h.ends_with("8080"))
    }) {
        problems.push(format!(
            "gateway does not publish host port 8080 to its listen port {port:?} (ports: {published:?})"
        ));
    }
    let test = argv(&gateway["healthcheck"]["test"]).join(" ");
    if !test.contains("/readyz") || !test.contains(&format!(":{port}/")) {
        problems.push(format!(
            "gateway's healthcheck {test:?} does not query /readyz on its listen port {port:?}"
        ));
    }
    if test.contains("curl") && !image.has_program("curl") {
        problems.push(format!(
            "gateway's healthcheck runs curl, which {DOCKERFILE} does not install"
        ));
    }
}

fn check_bot_agent(repo: &Repo, problems: &mut Vec<String>) {
    let agent = repo.service("bot-agent");
    if agent.is_null() {
        return;
    }
    for fixed in ["container_name", "hostname"] {
        if !agent[fixed].is_null() {
            problems.push(format!(
                "bot-agent sets {fixed}: {:?}; with `--scale bot-agent=3` replicas need distinct host names (and container names)",
                scalar(&agent[fixed])
            ));
        }
    }
    let env = environment(agent);
    if env.iter().any(|(k, _)| k == "ORQ_AGENT__NAME") {
        problems.push(
            "bot-agent sets ORQ_AGENT__NAME, which would make every replica the same bot; the name defaults to the container's host name, which differs per replica"
                .to_string(),
        );
    }
    if ports(agent).iter().any(|(_, host)| host.is_some()) {
        problems.push(
            "bot-agent publishes a fixed host port, which clashes between replicas".to_string(),
        );
    }
    match env_value(&env, "ORQ_AGENT__TOKEN") {
        None => problems.push(
            "bot-agent does not set ORQ_AGENT__TOKEN (its bot token, from ${ORQ_BOT_TOKEN})"
                .to_string(),
        ),
        Some(token) if !interpolations(&token).0.iter().any(|(v, _)| v == "ORQ_BOT_TOKEN") => {
            problems.push(format!(
                "bot-agent's ORQ_AGENT__TOKEN is {token:?}, not taken from the host's ORQ_BOT_TOKEN (${{ORQ_BOT_TOKEN...}})"
            ))
        }
        Some(_) => {}
    }
    check_stop_grace(repo, agent, &env, problems);
    let expected = format!("http://gateway:{}", gateway_port(repo).unwrap_or_default());
    let url = env_value(&env, "ORQ_AGENT__GATEWAY_URL");
    if url.as_deref().map(|u| u.trim_end_matches('/')) != Some(expected.as_str()) {
        problems.push(format!(
            "bot-agent's ORQ_AGENT__GATEWAY_URL is {url:?}, not the gateway service {expected}"
        ));
    }
    if agent["depends_on"]["gateway"]["condition"].as_str() != Some("service_healthy") {
        problems.push(
            "bot-agent must wait for the gateway to be healthy before registering (depends_on.gateway.condition: service_healthy)"
                .to_string(),
        );
    }
    if repo.service("gateway")["healthcheck"]["test"].is_null() {
        problems.push(
            "gateway has no healthcheck, so bot-agent's depends_on gateway: service_healthy never holds"
                .to_string(),
        );
    }
}

/// An agent stopped (`docker compose stop`, or scaled down) lets its running
/// jobs finish for `agent.shutdown_grace_ms`: compose must wait that long
/// before its SIGKILL.
fn check_stop_grace(
    repo: &Repo,
    agent: &Value,
    env: &[(String, Option<String>)],
    problems: &mut Vec<String>,
) {
    let args = argv(&agent["command"]);
    let config = config_paths(&args, env)
        .first()
        .and_then(|path| repo.image().in_repo(&repo.root, path).ok());
    let Ok(settings) = Settings::load(config.as_deref()) else {
        return; // reported with the --config checks
    };
    let drain = env_value(env, "ORQ_AGENT__SHUTDOWN_GRACE_MS")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(settings.agent.shutdown_grace_ms);
    let drain = std::time::Duration::from_millis(drain);
    let stop = match &agent["stop_grace_period"] {
        Value::Null => Ok(std::time::Duration::from_secs(10)),
        value => orq_e2e::compose_duration(&scalar(value)),
    };
    match stop {
        Err(e) => problems.push(format!("bot-agent's stop_grace_period: {e}")),
        Ok(stop) if stop <= drain => problems.push(format!(
            "bot-agent's stop_grace_period is {stop:?}, not more than the {drain:?} a stopping agent gives its running jobs (agent.shutdown_grace_ms): compose would SIGKILL it mid-job"
        )),
        Ok(_) => {}
    }
}

// ---------------------------------------------------------------- agent.toml

fn looks_like_path(arg: &str) -> bool {
    !arg.starts_with('-')
        && !arg.contains("://")
        && (arg.contains('/')
            || [".py", ".sh", ".rb", ".js", ".pl", ".toml", ".csv", ".json"]
                .iter()
                .any(|ext| arg.ends_with(ext)))
}

/// The automations a bot-agent configuration declares exist in the image.
fn check_systems(repo: &Repo, config: &Path) -> Vec<String> {
    let shown = config.strip_prefix(&repo.root).unwrap_or(config).display();
    let settings = match Settings::load(Some(config)) {
        Ok(s) => s,
        Err(e) => return vec![format!("{shown} does not load: {e}")],
    };
    let image = repo.image();
    let mut problems = Vec::new();
    if settings.agent.systems.is_empty() {
        problems.push(format!("{shown} declares no [agent.systems]"));
    }
    for (system, argv) in &settings.agent.systems {
        let Some(program) = argv.first() else {
            problems.push(format!("{shown}: system {system} has an empty command"));
            continue;
        };
        if program.starts_with("builtin:") {
            continue;
        }
        if !looks_like_path(program) && !image.has_program(program) {
            problems.push(format!(
                "{shown}: system {system} runs {program}, which the runtime image of {DOCKERFILE} does not install (apt-get install {:?})",
                image.packages
            ));
        }
        for arg in argv.iter().filter(|a| looks_like_path(a)) {
            match image.in_repo(&repo.root, arg) {
                Err(e) => problems.push(format!("{shown}: system {system}: {e}")),
                Ok(file) if !file.is_file() => problems.push(format!(
                    "{shown}: system {system} runs {arg}, which is {} in the repository and does not exist",
                    file.display()
                )),
                Ok(_) => {}
            }
        }
    }
    problems
}

// ---------------------------------------------------------------- tests

#[test]
fn the_compose_file_matches_the_workspace() {
    let repo = Repo::load();
    assert_no_problems("docker-compose.yml", &check_compose(&repo));
}

#[test]
fn the_dockerfile_builds_and_ships_every_binary() {
    let repo = Repo::load();
    assert_no_problems(DOCKERFILE, &check_dockerfile(&repo));
}

#[test]
fn the_demo_agent_configuration_points_at_real_automations() {
    let repo = Repo::load();
    let config = repo.root.join("examples/agent.toml");
    assert_no_problems("examples/agent.toml", &check_systems(&repo, &config));
}

/// Breaks copies of the files one way at a time; each must be reported.
#[test]
fn broken_files_are_reported() {
    let good = Repo::load();
    let expect = |what: &str, problems: Vec<String>, needle: &str| {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "breaking {what} went unnoticed: no problem mentions {needle:?}; got {problems:#?}"
        );
    };
    let compose = |edit: &dyn Fn(&mut Value)| {
        let mut repo = good.clone();
        edit(&mut repo.compose);
        check_compose(&repo)
    };
    let docker = |edit: &dyn Fn(&str) -> String| {
        let mut repo = good.clone();
        repo.dockerfile = edit(&good.dockerfile);
        check_dockerfile(&repo)
    };
    expect(
        "the postgres healthcheck",
        compose(&|v| {
            if let Some(m) = v["services"]["postgres"].as_mapping_mut() {
                m.remove("healthcheck");
            }
        }),
        "postgres has no healthcheck",
    );
    expect(
        "the dispatcher's command",
        compose(&|v| v["services"]["dispatcher"]["command"] = Value::from("dispatch")),
        "runs \"dispatch\", which is not a workspace binary",
    );
    expect(
        "the bot-agent's --config",
        compose(&|v| {
            v["services"]["bot-agent"]["command"] =
                Value::from("bot-agent --config /app/examples/missing.toml")
        }),
        "missing.toml, which does not exist",
    );
    expect(
        "a --config outside the image",
        compose(&|v| {
            v["services"]["bot-agent"]["command"] =
                Value::from("bot-agent --config /etc/orq/agent.toml")
        }),
        "/etc/orq/agent.toml is not in the image",
    );
    expect(
        "an environment key",
        compose(&|v| {
            v["services"]["gateway"]["environment"]["ORQ_GATEWAY__PORT"] = Value::from("8080")
        }),
        "gateway sets ORQ_GATEWAY__PORT, which is not a configuration key",
    );
    expect(
        "the list form of environment",
        compose(&|v| {
            v["services"]["dispatcher"]["environment"] = Value::Sequence(vec![
                Value::from(
                    "ORQ_DATABASE__URL=postgres://orquestra:orquestra@postgres:5432/orquestra",
                ),
                Value::from("ORQ_DISPATCHER__SWEEP=5"),
            ])
        }),
        "dispatcher sets ORQ_DISPATCHER__SWEEP",
    );
    expect(
        "a fixed agent name",
        compose(&|v| {
            v["services"]["bot-agent"]["environment"]["ORQ_AGENT__NAME"] = Value::from("bot-1")
        }),
        "bot-agent sets ORQ_AGENT__NAME",
    );
    expect(
        "a fixed container name",
        compose(&|v| v["services"]["bot-agent"]["container_name"] = Value::from("bot")),
        "bot-agent sets container_name",
    );
    expect(
        "a health condition",
        compose(&|v| {
            v["services"]["timeout-reaper"]["depends_on"]["rabbitmq"]["condition"] =
                Value::from("service_started")
        }),
        "timeout-reaper must wait for rabbitmq to be healthy",
    );
    expect(
        "the agents' stop grace period",
        compose(&|v| {
            if let Some(m) = v["services"]["bot-agent"].as_mapping_mut() {
                m.remove("stop_grace_period");
            }
        }),
        "bot-agent's stop_grace_period is 10s, not more than the 30s",
    );
    expect(
        "the gateway's published port",
        compose(&|v| v["services"]["gateway"]["ports"] = Value::Sequence(vec![])),
        "gateway does not publish host port 8080",
    );
    expect(
        "the gateway's listen address",
        compose(&|v| {
            v["services"]["gateway"]["environment"]["ORQ_GATEWAY__LISTEN"] =
                Value::from("127.0.0.1:8080")
        }),
        "must listen on 0.0.0.0",
    );
    expect(
        "the database password",
        compose(&|v| {
            v["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] = Value::from("other")
        }),
        "ORQ_DATABASE__URL's password is not postgres's POSTGRES_PASSWORD",
    );
    expect(
        "a required token variable",
        compose(&|v| {
            v["services"]["bot-agent"]["environment"]["ORQ_AGENT__TOKEN"] =
                Value::from("${ORQ_BOT_TOKEN:?set ORQ_BOT_TOKEN}")
        }),
        "makes ORQ_BOT_TOKEN required",
    );
    expect(
        "a bare `$`",
        compose(&|v| {
            v["services"]["dispatcher"]["environment"]["ORQ_AMQP__URL"] =
                Value::from("amqp://guest:pa$ @rabbitmq:5672/%2f")
        }),
        "is neither `$$` nor `${VAR}`",
    );

    expect(
        "a single-stage Dockerfile",
        docker(&|d| {
            let runtime = d.find("FROM ${RUNTIME_IMAGE}").unwrap_or_default();
            d[runtime..].to_string()
        }),
        "has 1 FROM stage(s)",
    );
    expect(
        "a package the Dockerfile builds",
        docker(&|d| d.replace("-p dispatcher", "")),
        "does not build dispatcher",
    );
    expect(
        "a binary the Dockerfile ships",
        docker(&|d| d.replace("/out/timeout-reaper /usr/local/bin/", "/usr/local/bin/")),
        "a timeout-reaper binary into /usr/local/bin",
    );
    expect(
        "a workspace member the build stage needs",
        docker(&|d| d.replace("COPY bench bench\n", "")),
        "does not COPY bench",
    );
    expect(
        "the default source of the binaries",
        docker(&|d| d.replace("ARG BINARIES=build", "ARG BINARIES=prebuilt")),
        "without build arguments the runtime stage's binaries come from stage Some(\"prebuilt\")",
    );
    expect(
        "the runtime image's release",
        docker(&|d| {
            d.replace(
                "RUNTIME_IMAGE=debian:bookworm-slim",
                "RUNTIME_IMAGE=debian:trixie-slim",
            )
        }),
        "use the same Debian release (bookworm)",
    );
    expect(
        "the non-root user",
        docker(&|d| d.replace("USER orquestra", "USER root")),
        "not a non-root user",
    );
    expect(
        "python3 in the image",
        docker(&|d| d.replace(" python3 ", " ")),
        "does not apt-get install python3",
    );

    let config = std::env::temp_dir().join(format!("orq-compose-test-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        "[agent.systems]\nVivo360 = [\"python3\", \"examples/missing.py\"]\nRuby = [\"ruby\", \"examples/vivo360_create_user.py\"]\n",
    )
    .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
    let problems = check_systems(&good, &config);
    let _ = std::fs::remove_file(&config);
    expect(
        "an automation path",
        problems.clone(),
        "examples/missing.py, which is",
    );
    expect(
        "an automation program",
        problems,
        "runs ruby, which the runtime image",
    );
}

#[test]
fn interpolation_without_variables_set_leaves_the_defaults() {
    assert_eq!(
        with_defaults("${ORQ_GATEWAY_PUBLISH:-8080}:8080"),
        "8080:8080"
    );
    assert_eq!(with_defaults("${A:-${B:-x}}y"), "xy");
    assert_eq!(with_defaults("${A-z}"), "z");
    assert_eq!(with_defaults("a${A}b$B"), "ab");
    assert_eq!(with_defaults("${TOKEN:?set it}"), "");
    assert_eq!(with_defaults("pa$$word"), "pa$word");
}
