#!/usr/bin/env bash
# What the tests need beyond Rust, installed from Debian's packages when missing. `.ci/run`
# calls it first; by hand: `sudo bash tests/deps.sh`.
#
#   make, gcc      build scripts and the C toolchain cargo links with
#   util-linux     prlimit: the end-to-end tests lower a worker's descriptor limit
#   etcd-server    etcd: the cluster tests run a 3-member etcd on loopback (tests/cluster/etcd.sh)
#   etcd-client    etcdctl: the cluster rig waits on `etcdctl endpoint health`
#   nginx          nginx: the CLI's TLS test runs it as a TLS-terminating proxy on loopback
#                  (tests/it/tls_proxy.rs)
#   man-db         man: the generated man page is rendered with `man -l` (tests/it/cli_help.rs)
#   groff-base     groff: man's formatter; the page is also checked for roff warnings
#   systemd        systemd-analyze: the unit must pass `systemd-analyze verify` (tests/it/systemd.rs)
#   chromium       chromium: the browser tests drive a headless Chromium (tests/it/support/browser.rs)
#   chromium-driver  chromedriver: the WebDriver server those tests talk to, one per test
#   openssl        openssl: test certificates, and `s_client` for the TLS port's version and
#                  cipher checks (tests/it/tls.rs, clients/python/tests/test_tls.py)
#
# Idempotent: when every command is present it does nothing and touches no network. Missing
# ones are installed as root (`apt-get update` first, quietly; apt's output is shown only if it
# fails). While another apt or dpkg runs (an unattended upgrade, another install), it waits for
# that one to finish, up to ten minutes, instead of failing on the lock. Not root and something missing: exits 1 at
# once, naming the command to run.
set -euo pipefail

# command the tests run -> Debian package that provides it
needs=(
  "make make"
  "cc gcc"
  "prlimit util-linux"
  "etcd etcd-server"
  "etcdctl etcd-client"
  "nginx nginx"
  "man man-db"
  "groff groff-base"
  "systemd-analyze systemd"
  "chromium chromium"
  "chromedriver chromium-driver"
  "openssl openssl"
)

missing=()
# nginx lives in /usr/sbin, which not every PATH holds.
PATH="$PATH:/usr/sbin:/sbin"
for need in "${needs[@]}"; do
  read -r cmd pkg <<<"$need"
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
((${#missing[@]})) || exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "tests/deps.sh: missing ${missing[*]}; run: sudo bash tests/deps.sh" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "tests/deps.sh: missing ${missing[*]} and no apt-get here; install them by hand" >&2
  exit 1
fi

echo "tests/deps.sh: installing ${missing[*]} from Debian's packages" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# apt-get update takes the lists lock without waiting; install waits on dpkg's lock by itself
# with DPkg::Lock::Timeout. So wait first for whatever apt or dpkg already runs, polling.
deadline=$((SECONDS + 600))
while pgrep -x 'apt|apt-get|dpkg|unattended-upgr' >/dev/null 2>&1; do
  if ((SECONDS >= deadline)); then
    echo "tests/deps.sh: another apt or dpkg still runs after 10 minutes; try again when it is done" >&2
    exit 1
  fi
  sleep 1
done
wait_lock=(-o DPkg::Lock::Timeout=600)
if ! { apt-get "${wait_lock[@]}" update -qq &&
  DEBIAN_FRONTEND=noninteractive apt-get "${wait_lock[@]}" install -y -qq "${missing[@]}"; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "tests/deps.sh: apt-get failed installing ${missing[*]}" >&2
  exit 1
fi

# On a machine with systemd, installing etcd-server also enables and starts a system etcd on
# the default ports (2379/2380). The tests start their own members on other ports; a system
# etcd nobody asked for would only take memory and CPU, so the one just installed is stopped.
if [[ " ${missing[*]} " == *" etcd-server "* ]] && command -v systemctl >/dev/null 2>&1 &&
  systemctl is-active --quiet etcd.service 2>/dev/null; then
  systemctl disable --now etcd.service >/dev/null 2>&1 || true
  echo "tests/deps.sh: stopped and disabled the system etcd.service the package started" >&2
fi

# Likewise nginx: the package starts a system nginx on port 80; the test runs its own.
if [[ " ${missing[*]} " == *" nginx "* ]] && command -v systemctl >/dev/null 2>&1 &&
  systemctl is-active --quiet nginx.service 2>/dev/null; then
  systemctl disable --now nginx.service >/dev/null 2>&1 || true
  echo "tests/deps.sh: stopped and disabled the system nginx.service the package started" >&2
fi

for need in "${needs[@]}"; do
  read -r cmd pkg <<<"$need"
  command -v "$cmd" >/dev/null 2>&1 || { echo "tests/deps.sh: $pkg installed but $cmd is still missing" >&2; exit 1; }
done
