#!/usr/bin/env bash
# Starts (pg_cluster_start) and stops (pg_cluster_stop) a throwaway PostgreSQL cluster
# on 127.0.0.1 for the tests, and exports APP_INBOX_TEST_PG_URL. Meant to be sourced.
# PostgreSQL refuses to run as root, so the cluster belongs to the `postgres` user.

pg_cluster_start() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$bin" ] || { echo "pg: no PostgreSQL server installed"; return 1; }
  local port=${APP_INBOX_TEST_PG_PORT:-55432}
  PG_TEST_DIR=$(mktemp -d /tmp/app-inbox-pg.XXXXXX)
  export PG_TEST_DIR PG_TEST_BIN=$bin
  local run=(bash -c)
  if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$PG_TEST_DIR"
    run=(su postgres -s /bin/bash -c)
  fi
  "${run[@]}" "$bin/initdb -D $PG_TEST_DIR/data -U postgres -A trust --no-sync >$PG_TEST_DIR/initdb.log 2>&1" || { cat "$PG_TEST_DIR/initdb.log"; return 1; }
  "${run[@]}" "$bin/pg_ctl -D $PG_TEST_DIR/data -l $PG_TEST_DIR/server.log -w -o \"-h 127.0.0.1 -p $port -k $PG_TEST_DIR -c fsync=off -c max_connections=300 -c synchronous_commit=off -c full_page_writes=off\" start >/dev/null" || { cat "$PG_TEST_DIR/server.log"; return 1; }
  export APP_INBOX_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
  echo "pg: test cluster up at $APP_INBOX_TEST_PG_URL"
}

pg_cluster_stop() {
  [ -n "${PG_TEST_DIR:-}" ] || return 0
  local run=(bash -c)
  [ "$(id -u)" = 0 ] && run=(su postgres -s /bin/bash -c)
  "${run[@]}" "$PG_TEST_BIN/pg_ctl -D $PG_TEST_DIR/data -m immediate stop >/dev/null 2>&1"
  rm -rf "$PG_TEST_DIR"
}
