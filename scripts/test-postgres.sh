# shellcheck shell=bash
# A throw-away Postgres server for the tests, sourced by scripts/test (and usable
# by hand: `. scripts/test-postgres.sh; start_test_postgres; ...`).
#
# start_test_postgres: installs Debian's `postgresql` when missing (needs
# scripts/tools.sh sourced first), initdb's a cluster into a temp dir as the
# unprivileged user `nobody` (Postgres refuses to run as root), starts it on
# 127.0.0.1 on a free port with trust auth (nothing else can reach it), exports
# AGENTMON_TEST_POSTGRES_URL and stops it and removes the dir at exit (trap).
# Tests that need Postgres skip with a reason when that variable is unset.

start_test_postgres() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    apt_install false -- postgresql
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  local user=nobody
  pg_bin=$bin
  pg_as=(runuser -u "$user" --)
  [ "$(id -u)" = 0 ] || pg_as=() # not root: run as ourselves
  pg_dir=$(mktemp -d /tmp/agentmon-pg.XXXXXX)
  chmod 0755 "$pg_dir"
  [ "$(id -u)" = 0 ] && chown "$user" "$pg_dir"
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "${pg_as[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U agentmon --auth=trust -E UTF8 >"$pg_dir/initdb.log" 2>&1 \
    || { cat "$pg_dir/initdb.log" >&2; return 1; }
  # Many tests each create a database; fsync off makes that quick (data is thrown away).
  "${pg_as[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 60 start \
    -o "-h 127.0.0.1 -p $port -k $pg_dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    >/dev/null || { cat "$pg_dir/server.log" >&2; return 1; }
  pg_stop() {
    "${pg_as[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$pg_dir"
  }
  trap pg_stop EXIT
  export AGENTMON_TEST_POSTGRES_URL="postgres://agentmon@127.0.0.1:$port/postgres"
  printf 'Postgres for the tests at %s (%s)\n' "$AGENTMON_TEST_POSTGRES_URL" "$bin"
}
