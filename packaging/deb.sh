#!/usr/bin/env bash
# `make deb`: the Debian package, built by cargo-deb from `[package.metadata.deb]` in
# Cargo.toml, out of the release binary that `make build` left in target/release/.
#
# What the package holds besides files of the repository is staged here first, in
# target/deb-staging/ (the paths Cargo.toml names):
#   systemd/leasehold.service  systemd/leasehold.service with the binary at /usr/bin (the
#                              package's path) instead of /usr/local/bin (a hand install's);
#                              a copy, so the unit in the repository stays the one to edit
#   leasehold.1.gz             the man page, from `leasehold man`
#   leasehold.bash, _leasehold, leasehold.fish
#                              completions, from `leasehold completions bash|zsh|fish`
# A binary without the `man` or `completions` subcommand fails here with a message naming
# it, rather than packaging without them.
#
#   bash packaging/deb.sh              stage, then build target/debian/leasehold_<version>-1_<arch>.deb
#   bash packaging/deb.sh stage DIR BIN
#                                      only stage, into DIR, with the binary BIN (the tests)
#
# cargo-deb is installed with `cargo install --locked cargo-deb` when missing (crates.io).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cargo=${CARGO:-cargo}

die() {
  echo "make deb: $*" >&2
  exit 1
}

# stage DIR BIN: the unit, the man page and the completions, as listed above.
stage() {
  local dir=$1 bin=$2
  [ -x "$bin" ] || die "no binary at $bin (make build first)"
  mkdir -p "$dir/systemd"

  sed 's|/usr/local/bin/leasehold|/usr/bin/leasehold|g' "$root/systemd/leasehold.service" >"$dir/systemd/leasehold.service"
  if grep -n '/usr/local' "$dir/systemd/leasehold.service" >&2; then
    die "systemd/leasehold.service names another path under /usr/local (above): the package installs only /usr/bin/leasehold; teach packaging/deb.sh where it goes"
  fi
  grep -q '^ExecStart=/usr/bin/leasehold ' "$dir/systemd/leasehold.service" ||
    die "the packaged unit has no ExecStart=/usr/bin/leasehold line (systemd/leasehold.service starts leasehold from elsewhere)"

  if ! "$bin" man >"$dir/leasehold.1" 2>/dev/null || ! [ -s "$dir/leasehold.1" ]; then
    rm -f "$dir/leasehold.1"
    die "'$bin man' did not print a man page: this build has no \`leasehold man\` subcommand (it comes with the clap command line); build one that has it"
  fi
  gzip -9 -n -f "$dir/leasehold.1"

  local shell file
  for shell in bash zsh fish; do
    case $shell in
      bash) file=leasehold.bash ;;
      zsh) file=_leasehold ;;
      fish) file=leasehold.fish ;;
    esac
    if ! "$bin" completions "$shell" >"$dir/$file" 2>/dev/null || ! [ -s "$dir/$file" ]; then
      rm -f "$dir/$file"
      die "'$bin completions $shell' did not print a completion script: this build has no \`leasehold completions\` subcommand (it comes with the clap command line); build one that has it"
    fi
  done
}

case ${1:-} in
  stage)
    [ $# -eq 3 ] || die "usage: packaging/deb.sh stage DIR BIN"
    stage "$2" "$3"
    exit 0
    ;;
  "") ;;
  *) die "usage: packaging/deb.sh [stage DIR BIN]" ;;
esac

cd "$root"
bin=${CARGO_TARGET_DIR:-target}/release/leasehold
rm -rf target/deb-staging
stage target/deb-staging "$bin"

if ! "$cargo" deb --version >/dev/null 2>&1; then
  echo "make deb: cargo-deb is missing; installing it: $cargo install --locked cargo-deb" >&2
  "$cargo" install --locked cargo-deb
fi

# --no-build: `make deb` built the binary already (with --locked), and the man page and the
# completions above came from that same binary.
deb=$("$cargo" deb --no-build | tail -n 1)
[ -f "$deb" ] || die "cargo deb did not name a package it wrote (last line: $deb)"
echo "$deb ($(stat -c %s "$deb") bytes)"
