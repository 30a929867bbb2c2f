#!/bin/sh
# The stand-in rabbitmq image's entrypoint: writes rabbitmq.conf from the
# official image's variables (guest may log in from other containers, as
# there), then runs the server as the rabbitmq user, logging to the console.
set -eu

if [ "${1:-}" != rabbitmq-server ]; then
  exec "$@"
fi

{
  echo 'loopback_users.guest = false'
  echo 'listeners.tcp.default = 5672'
  echo 'management.tcp.port = 15672'
  echo 'log.console = true'
  echo 'log.file = false'
  if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then
    echo "default_user = $RABBITMQ_DEFAULT_USER"
  fi
  if [ -n "${RABBITMQ_DEFAULT_PASS:-}" ]; then
    echo "default_pass = $RABBITMQ_DEFAULT_PASS"
  fi
  if [ -n "${RABBITMQ_DEFAULT_VHOST:-}" ]; then
    echo "default_vhost = $RABBITMQ_DEFAULT_VHOST"
  fi
} >/etc/rabbitmq/rabbitmq.conf

chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
cd /var/lib/rabbitmq
export HOME=/var/lib/rabbitmq
exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups /usr/lib/rabbitmq/bin/rabbitmq-server
