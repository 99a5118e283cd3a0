#!/usr/bin/env bash
# Start the machine's MariaDB server when it is installed but not running, then wait for its port. The
# tests that need it fail in CI (CI=true) and skip with the reason elsewhere when it is still unreachable.
set -u
answers() { (exec 3<>/dev/tcp/127.0.0.1/3306) 2>/dev/null; }
if answers; then
  exit 0
fi
if [ ! -x /usr/sbin/mariadbd ]; then
  echo "ensure-mariadb: no MariaDB server here; MariaDB tests will say why they cannot run"
  exit 0
fi
start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
for _ in $(seq 1 30); do
  answers && exit 0
  sleep 1
done
echo "ensure-mariadb: MariaDB is not answering on 127.0.0.1:3306"
exit 0
