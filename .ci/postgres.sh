# Sourced by .ci/run: a throwaway PostgreSQL server on loopback for the multi-worker study test.
# Installs Debian's postgresql when its server binaries are missing; exports AUTOPROMPT_TEST_POSTGRES.
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
if [ -z "$(pg_bin)" ] || [ ! -x "$(pg_bin)/postgres" ]; then
  echo "ci: installing postgresql (Debian)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi
PG_BIN="$(pg_bin)"
PG_DIR="$(mktemp -d /tmp/autoprompt-pg.XXXXXX)"
PG_PORT=55432
if [ "$(id -u)" -eq 0 ]; then  # the server refuses to run as root
  chown postgres: "$PG_DIR"
  as_pg() { su postgres -s /bin/sh -c "$*"; }
else
  as_pg() { sh -c "$*"; }
fi
as_pg "'$PG_BIN/initdb' -D '$PG_DIR/data' -A trust -U autoprompt >/dev/null"
as_pg "'$PG_BIN/pg_ctl' -D '$PG_DIR/data' -l '$PG_DIR/log' -w -o '-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR' start >/dev/null"
export AUTOPROMPT_TEST_POSTGRES="postgresql+psycopg://autoprompt@127.0.0.1:$PG_PORT/postgres"
stop_postgres() { as_pg "'$PG_BIN/pg_ctl' -D '$PG_DIR/data' -m fast stop >/dev/null" || true; }
trap stop_postgres EXIT
echo "ci: PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT"
