# shellcheck shell=bash
# Installing what the checks need, sourced by scripts/test and scripts/check-*:
# one way to get a Debian package or a pinned pip venv, idempotent, on a fresh
# machine where only the package registries are reachable. The caller sets
# `tools` (the cache folder, target/tools).
: "${tools:?set tools (the cache folder) before sourcing scripts/tools.sh}"

# apt_install <probe command...> -- <package...>: install the Debian packages
# when the probe fails (the package lists are updated once per cache folder).
apt_install() {
  local probe=()
  while [ "$1" != -- ]; do probe+=("$1"); shift; done
  shift
  "${probe[@]}" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "need Debian packages $* (for: ${probe[*]}); not root, cannot apt-get" >&2
    return 1
  fi
  printf '==> installing %s (apt)\n' "$*"
  if [ ! -f "$tools/.apt-updated" ]; then apt-get update -qq && touch "$tools/.apt-updated"; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# pip_venv <python> <dir> <requirement...>: a venv at <dir> holding exactly
# these pinned requirements, rebuilt when the pins change.
pip_venv() {
  local py=$1 dir=$2; shift 2
  [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.pins" 2>/dev/null)" = "$*" ] && return 0
  printf '==> installing %s (pip, %s)\n' "$*" "$dir"
  rm -rf "$dir"
  "$py" -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check "$@"
  echo "$*" > "$dir/.pins"
}
