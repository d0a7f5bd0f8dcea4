#!/usr/bin/env bash
# Install (from Debian's packages) and start the services the test suite and `make run` need: MariaDB, Redis and
# RabbitMQ on loopback, plus the Prometheus tools the chart checks use. Each is left alone when it already answers.
# `make services` runs this; so does CI (.ci/run). Needs root for apt-get and for starting the daemons.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
log() { printf '\n== %s\n' "$*"; }

packages=()
[ -x /usr/sbin/mariadbd ] || packages+=(mariadb-server mariadb-client)
command -v redis-server >/dev/null || packages+=(redis-server)
command -v rabbitmq-server >/dev/null || packages+=(rabbitmq-server)
command -v promtool >/dev/null || packages+=(prometheus)
command -v prometheus-pushgateway >/dev/null || packages+=(prometheus-pushgateway)
command -v python3 >/dev/null || packages+=(python3 python3-venv)
if [ ${#packages[@]} -gt 0 ]; then
  log "installing ${packages[*]}"
  apt-get update -q
  apt-get install -yq --no-install-recommends "${packages[@]}"
fi
# The browser tests (tests/e2e/test_browser_example.py) drive Debian's Chromium headless with Playwright (no browser
# download). Installed with its recommended packages (fonts, Mesa), as the tests were developed against.
if ! command -v chromium >/dev/null; then
  log "installing chromium"
  [ ${#packages[@]} -gt 0 ] || apt-get update -q
  apt-get install -yq chromium
fi

wait_for() { # wait_for <seconds> <command...>
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "timed out waiting for: $*" >&2; return 1; fi
    sleep 1
  done
}

if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for 30 redis-cli -h 127.0.0.1 ping
fi

if ! rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1; then
  log "starting RabbitMQ (file descriptor limit 65536)"
  # At the default 1024 descriptors a few hundred quorum queues exhaust the broker's file handle cache and every
  # new AMQP connection hangs: raise the limit for the broker (it inherits this shell's).
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  # Debian's /usr/sbin/rabbitmq-server switches user with `su`, whose PAM session (pam_limits) puts the soft limit
  # back to 1024: switch with setpriv instead, which keeps this shell's limits.
  (cd /var/lib/rabbitmq && HOME=/var/lib/rabbitmq setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
    /usr/lib/rabbitmq/bin/rabbitmq-server -detached) || true
  wait_for 120 rabbitmq-diagnostics -q check_port_connectivity
fi
fd_limit=$(rabbitmq-diagnostics -q status 2>/dev/null | sed -n '/File Descriptors/,/limit/s/.*limit: \([0-9]*\).*/\1/p' | head -n 1)
if [ "${fd_limit:-0}" -lt 4000 ]; then
  echo "warning: RabbitMQ runs with ${fd_limit:-an unknown} file descriptor limit (it was started before this script?):" \
    "restart it with 'rabbitmqctl stop' and run this again" >&2
fi

if ! mysqladmin --protocol=tcp -h 127.0.0.1 -uroot ping >/dev/null 2>&1; then
  log "starting MariaDB"
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
  wait_for 60 mysqladmin ping
fi
if ! mysql --protocol=tcp -h 127.0.0.1 -uroot -e 'SELECT 1' >/dev/null 2>&1; then
  # A fresh Debian install lets root in over the socket only: allow the empty-password TCP login the tests use.
  log "allowing root over TCP with an empty password (local development and CI only)"
  mysql -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket; FLUSH PRIVILEGES;"
fi
log "services up: MariaDB 127.0.0.1:3306, Redis 127.0.0.1:6379, RabbitMQ 127.0.0.1:5672"
