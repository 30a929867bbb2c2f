#!/bin/sh
# The stand-in postgres image's entrypoint: on an empty data directory,
# initdb with POSTGRES_USER and POSTGRES_PASSWORD, allow password logins
# from other containers, create POSTGRES_DB; then run the server as the
# postgres user. What the official image does, for what docker-compose.yml
# uses of it.
set -eu

if [ "${1:-}" != postgres ]; then
  exec "$@"
fi

: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
: "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"

as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
    echo "Error: the database is uninitialized and POSTGRES_PASSWORD is not set" \
      "(or set POSTGRES_HOST_AUTH_METHOD=trust)" >&2
    exit 1
  fi
  pwfile=$(mktemp)
  printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
  chown postgres "$pwfile"
  as_postgres initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
    --encoding=UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host="$POSTGRES_HOST_AUTH_METHOD" \
    >/dev/null
  rm -f "$pwfile"
  echo "host all all all $POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    # Single-user mode: nothing listens until the database exists, so the
    # healthcheck cannot pass early.
    printf 'CREATE DATABASE "%s";\n' "$POSTGRES_DB" |
      as_postgres postgres --single -D "$PGDATA" postgres >/dev/null
  fi
  echo "initialized $PGDATA: user $POSTGRES_USER, database $POSTGRES_DB"
fi

exec setpriv --reuid=postgres --regid=postgres --init-groups "$@"
