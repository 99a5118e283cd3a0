#!/usr/bin/env bash
# Start the machine's PostgreSQL cluster when it is installed but not running. The tests that need it fail
# in CI (CI=true) and skip with the reason elsewhere when it is still unreachable.
set -u
if ! command -v pg_isready >/dev/null 2>&1; then
  echo "ensure-postgres: no PostgreSQL client tools here; PostgreSQL tests will say why they cannot run"
  exit 0
fi
if pg_isready -q -h 127.0.0.1 -p 5432; then
  exit 0
fi
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p 5432 && exit 0
    sleep 1
  done
fi
echo "ensure-postgres: PostgreSQL is not answering on 127.0.0.1:5432"
exit 0
