//! The images the compose test runs. No image registry can be reached, so:
//!
//! * a Debian base of this machine's release, made with `debootstrap
//!   --variant=minbase` from the mirror apt uses here and `podman import`ed,
//!   once per machine (the binaries are built here, against its glibc);
//! * stand-ins for `postgres:16` and `rabbitmq:3.13-management` on that base,
//!   from Debian's packages (`postgres/`, `rabbitmq/` beside this file);
//! * ours, from `deploy/Dockerfile`'s runtime stage with the binaries this
//!   workspace built (`BINARIES=prebuilt`).
//!
//! The stand-ins and ours are built every run on podman's layer cache: only
//! what changed is built again (ours: its binaries' layer).

use anyhow::{Context, ensure};
use std::path::{Path, PathBuf};

use crate::podman::{Podman, run};

/// Images of this test only, apart from anything a user builds or pulls.
const PREFIX: &str = "localhost/orq-compose-test";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const BINARIES: [&str; 4] = ["gateway", "dispatcher", "bot-agent", "timeout-reaper"];

pub struct Images {
    pub postgres: String,
    pub rabbitmq: String,
    pub orquestra: String,
}

pub async fn prepare(podman: &Podman, root: &Path) -> anyhow::Result<Images> {
    let release = debian_release()?;
    let base = format!("{PREFIX}/debian:{release}");
    if podman.image_id(&base).await?.is_none() {
        debootstrap(podman, &base, &release).await?;
    }
    let here = root.join("e2e/tests/compose_up");
    let images = Images {
        postgres: format!("{PREFIX}/postgres:{release}"),
        rabbitmq: format!("{PREFIX}/rabbitmq:{release}"),
        orquestra: format!("{PREFIX}/orquestra:latest"),
    };
    for (tag, dir) in [
        (&images.postgres, "postgres"),
        (&images.rabbitmq, "rabbitmq"),
    ] {
        let dir = here.join(dir).to_string_lossy().into_owned();
        let base_arg = format!("BASE={base}");
        podman
            .output([
                "build",
                "--layers",
                "--build-arg",
                base_arg.as_str(),
                "--tag",
                tag.as_str(),
                dir.as_str(),
            ])
            .await
            .with_context(|| format!("building the stand-in {tag}"))?;
    }
    build_ours(podman, root, &base, &images.orquestra).await?;
    Ok(images)
}

/// This machine's Debian release (`VERSION_CODENAME`): the runtime image's
/// glibc must be the one the binaries were linked against here.
fn debian_release() -> anyhow::Result<String> {
    let text = std::fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim_matches('"').to_string())
    };
    ensure!(
        field("ID=").as_deref() == Some("debian"),
        "the compose test builds its images with debootstrap from Debian's packages, and this machine is not Debian ({:?})",
        field("ID=")
    );
    field("VERSION_CODENAME=")
        .filter(|c| !c.is_empty())
        .context("/etc/os-release has no VERSION_CODENAME")
}

/// The mirror apt uses here for `release` (deb822 `.sources` or one-line
/// `.list` files), so debootstrap fetches from where apt does.
fn debian_mirror(release: &str) -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    files
        .iter()
        .filter_map(|f| {
            let text = std::fs::read_to_string(f).ok()?;
            match f.extension().and_then(|e| e.to_str()) {
                Some("sources") => mirror_in_deb822(&text, release),
                Some("list") => mirror_in_one_line(&text, release),
                _ => None,
            }
        })
        .next()
        .unwrap_or_else(|| DEFAULT_MIRROR.to_string())
}

fn mirror_in_deb822(text: &str, release: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |key: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .unwrap_or_default()
        };
        let enabled = !field("Enabled:").eq_ignore_ascii_case("no");
        let deb = field("Types:").split_whitespace().any(|t| t == "deb");
        let suite = field("Suites:").split_whitespace().any(|s| s == release);
        (enabled && deb && suite)
            .then(|| field("URIs:").split_whitespace().next().map(str::to_string))
            .flatten()
    })
}

fn mirror_in_one_line(text: &str, release: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace().peekable();
        if words.next()? != "deb" {
            return None;
        }
        if words.peek()?.starts_with('[') {
            // `[arch=amd64 signed-by=…]`: options up to the closing bracket.
            for word in words.by_ref() {
                if word.ends_with(']') {
                    break;
                }
            }
        }
        let uri = words.next()?;
        (words.next()? == release).then(|| uri.to_string())
    })
}

/// A minimal Debian `release` as image `name`.
async fn debootstrap(podman: &Podman, name: &str, release: &str) -> anyhow::Result<()> {
    let mirror = debian_mirror(release);
    let work = std::env::temp_dir().join(format!("orq-compose-base-{}", std::process::id()));
    let rootfs = work.join("rootfs");
    let tarball = work.join("rootfs.tar");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let made = async {
        eprintln!("compose test: debootstrap {release} from {mirror} (once per machine)");
        run(tokio::process::Command::new("debootstrap")
            .args(["--variant=minbase", release])
            .arg(&rootfs)
            .arg(&mirror))
        .await
        .context("debootstrap (deploy/test.sh installs it with apt)")?;
        // What debootstrap downloaded; apt fetches its lists again.
        for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
            for entry in std::fs::read_dir(rootfs.join(dir))?.flatten() {
                if entry.file_type()?.is_file() {
                    std::fs::remove_file(entry.path())?;
                }
            }
        }
        run(tokio::process::Command::new("tar")
            .arg("--create")
            .arg("--file")
            .arg(&tarball)
            .arg("--directory")
            .arg(&rootfs)
            .arg("."))
        .await?;
        let tar = tarball.to_string_lossy().into_owned();
        podman
            .output([
                "import",
                "--change",
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--change",
                r#"CMD ["bash"]"#,
                tar.as_str(),
                name,
            ])
            .await?;
        anyhow::Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&work);
    made.with_context(|| format!("making the base image {name}"))
}

/// Builds `deploy/Dockerfile` with the binaries this workspace built, on
/// `base`; removes what the previous build of `tag` leaves unused.
async fn build_ours(podman: &Podman, root: &Path, base: &str, tag: &str) -> anyhow::Result<()> {
    // The context: the binaries, without their debug information (most of a
    // debug build's size: a gigabyte for the four, copied into layers every
    // run), and what the runtime stage copies from the repository.
    let context = std::env::temp_dir().join(format!("orq-compose-context-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(context.join("bin"))?;
    let built = async {
        for name in BINARIES {
            let from = orq_e2e::bin(name);
            ensure!(
                from.is_file(),
                "{} is missing: build the binaries first (deploy/test.sh runs cargo build --workspace --bins)",
                from.display()
            );
            run(tokio::process::Command::new("objcopy")
                .arg("--strip-debug")
                .arg(&from)
                .arg(context.join("bin").join(name)))
            .await?;
        }
        copy_dir(&root.join("examples"), &context.join("examples"))?;
        let before = podman.image_id(tag).await?;
        let dangling = podman.dangling_images().await?;
        let dockerfile = root.join("deploy/Dockerfile").to_string_lossy().into_owned();
        let runtime = format!("RUNTIME_IMAGE={base}");
        let dir = context.to_string_lossy().into_owned();
        podman
            .output([
                "build",
                "--layers",
                "--file",
                dockerfile.as_str(),
                "--build-arg",
                "BINARIES=prebuilt",
                "--build-arg",
                "PREBUILT=bin",
                "--build-arg",
                runtime.as_str(),
                "--tag",
                tag,
                dir.as_str(),
            ])
            .await
            .context("building deploy/Dockerfile")?;
        // The previous image of `tag` and this build's leftovers (its
        // binaries stage) would hold a copy of the binaries each run.
        let now = podman.image_id(tag).await?;
        let mut unused: Vec<String> = podman
            .dangling_images()
            .await?
            .into_iter()
            .filter(|id| !dangling.contains(id))
            .collect();
        unused.extend(before.filter(|b| Some(b) != now.as_ref()));
        for id in unused {
            let _ = podman.succeeds(["rmi", &id]).await;
        }
        ensure!(now.is_some(), "podman build made no {tag}");
        Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&context);
    built
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirror_is_read_from_either_kind_of_sources_file() {
        let deb822 = "Types: deb\nURIs: http://deb.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
                      Types: deb\nURIs: http://deb.example/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            mirror_in_deb822(deb822, "bookworm").as_deref(),
            Some("http://deb.example/debian")
        );
        assert_eq!(mirror_in_deb822(deb822, "trixie"), None);
        let disabled = "Enabled: no\nTypes: deb\nURIs: http://off/debian\nSuites: bookworm\n";
        assert_eq!(mirror_in_deb822(disabled, "bookworm"), None);
        let list = "# comment\ndeb-src http://src/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n";
        assert_eq!(
            mirror_in_one_line(list, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(mirror_in_one_line(list, "bullseye"), None);
    }
}
