# Shared by deploy/up.sh and deploy/test.sh: make sure PostgreSQL and RabbitMQ
# run on this machine (installing them with apt where missing) and that the
# Rust toolchain is there. Sourced, not run.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/orquestra-target}"
PG_URL_BASE="${ORQ_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  say "installing $* with apt"
  if [ -z "${ORQ_APT_UPDATED:-}" ]; then
    as_root apt-get update -qq
    ORQ_APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 what=$2
  for _ in $(seq 1 120); do
    port_open "$port" && return 0
    sleep 0.5
  done
  echo "$what did not open port $port" >&2
  return 1
}

ensure_tools() {
  command -v cargo >/dev/null || {
    echo "cargo is missing: install Rust 1.95 or newer (https://rustup.rs), then run this again" >&2
    exit 1
  }
  command -v python3 >/dev/null || apt_install python3
  command -v curl >/dev/null || apt_install curl
}

ensure_postgres() {
  if ! port_open 5432; then
    command -v pg_ctlcluster >/dev/null || apt_install postgresql postgresql-client
    local version
    version=$(ls /etc/postgresql | sort -V | tail -1)
    say "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || as_root service postgresql start
    wait_port 5432 PostgreSQL
  fi
  command -v psql >/dev/null || apt_install postgresql-client
  if ! psql "$PG_URL_BASE/postgres" -w -qAtc 'SELECT 1' >/dev/null 2>&1; then
    # A fresh Debian install asks a password over TCP: give the postgres role one.
    say "setting a password for the postgres role (local development only)"
    as_root su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'orquestra'\"" >/dev/null
    PG_URL_BASE="postgres://postgres:orquestra@127.0.0.1:5432"
    psql "$PG_URL_BASE/postgres" -w -qAtc 'SELECT 1' >/dev/null
  fi
  export ORQ_TEST_PG_URL="$PG_URL_BASE"
}

ensure_rabbitmq() {
  if ! port_open 5672; then
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
    say "starting RabbitMQ"
    as_root rabbitmq-server -detached || true
    wait_port 5672 RabbitMQ
  fi
}

# The Python peers some tests talk to: moto's S3 server and aiosmtpd, in a
# virtualenv of their own (outside the clone, reused across runs).
ensure_python_peers() {
  local venv="${ORQ_TEST_VENV:-$HOME/.cache/orquestra-venv}"
  if ! "$venv/bin/python" -c 'import moto, aiosmtpd, flask, schemathesis, openapi_python_client' >/dev/null 2>&1; then
    python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$venv"; }
    say "installing the Python test peers (moto, aiosmtpd, schemathesis, openapi-python-client) into $venv"
    "$venv/bin/pip" install -q 'moto[server]' aiosmtpd 'schemathesis>=4,<5' openapi-python-client
  fi
  export ORQ_TEST_PYTHON="$venv/bin/python"
}

# What the browser test needs: Debian's Chromium (never a downloaded browser),
# Node.js 20+ and e2e/browser's packages (playwright-core), installed again
# when package-lock.json changes.
ensure_browser_peers() {
  local chromium="${ORQ_TEST_CHROMIUM:-/usr/bin/chromium}"
  [ -x "$chromium" ] || apt_install chromium
  command -v node >/dev/null || apt_install nodejs npm
  command -v npm >/dev/null || apt_install npm
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$major" -lt 20 ]; then
    echo "Node.js $(node --version) is too old for e2e/browser (playwright-core needs 20 or newer)" >&2
    exit 1
  fi
  local dir=e2e/browser stamp=e2e/browser/node_modules/.orq-lock-sha256 sum
  sum=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [ ! -d "$dir/node_modules/playwright-core" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
    say "installing the browser test's packages (npm ci in $dir)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$sum" >"$stamp"
  fi
  export ORQ_TEST_CHROMIUM="$chromium"
}

# What the compose test (e2e/tests/compose_up) needs: rootful podman with
# runc (crun fails on these machines' hybrid cgroups), netavark and
# aardvark-dns for the project's bridge network and its service names,
# iptables for published ports, debootstrap for the base image (no image
# registry can be reached), and podman-compose in the test virtualenv (after
# ensure_python_peers). Podman's settings are the test's own
# (e2e/tests/compose_up/containers.conf), not the machine's.
ensure_compose_peers() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  [ -x /usr/lib/podman/netavark ] || missing+=(netavark)
  [ -x /usr/lib/podman/aardvark-dns ] || missing+=(aardvark-dns)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if [ "${#missing[@]}" -gt 0 ]; then
    apt_install --no-install-recommends "${missing[@]}"
  fi
  local venv="${ORQ_TEST_VENV:-$HOME/.cache/orquestra-venv}" version=1.6.0
  if [ "$("$venv/bin/podman-compose" version 2>/dev/null | sed -n 's/^podman-compose version //p')" != "$version" ]; then
    say "installing podman-compose $version into $venv"
    "$venv/bin/pip" install -q "podman-compose==$version"
  fi
  export ORQ_TEST_PODMAN_COMPOSE="$venv/bin/podman-compose"
}
