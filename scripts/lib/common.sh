# SPDX-License-Identifier: Apache-2.0
# Shared by scripts/test and scripts/demo: install missing Debian packages
# (as root) or print the exact apt-get line, and build.

LV_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

lv_packages() {
  sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$LV_ROOT/scripts/lib/packages"
}

lv_missing_packages() {
  local p missing=()
  for p in $(lv_packages); do
    # triggers-pending/-awaited: installed and configured, with a trigger
    # still to run (for instance man-db's while a test installs a .deb).
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
      grep -Eq 'install ok (installed|triggers-pending|triggers-awaited)' || missing+=("$p")
  done
  echo "${missing[@]}"
}

lv_ensure_packages() {
  local missing
  missing=$(lv_missing_packages)
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "Missing Debian packages. Run as root, or install them with:" >&2
    echo "  sudo apt-get install -y --no-install-recommends $missing" >&2
    return 1
  fi
  echo "==> installing: $missing"
  export DEBIAN_FRONTEND=noninteractive
  # Several suites may share the machine: wait for another dpkg run rather
  # than fail. (While packaging_deb_install installs the .deb, man-db runs
  # its trigger and is briefly not "installed" by the check above.)
  apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
  # shellcheck disable=SC2086
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $missing >/dev/null
}

# lv_build DIR [cmake args...]: configure (once) and build in DIR.
lv_build() {
  local dir=$1; shift
  cmake -S "$LV_ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
  cmake --build "$dir" -j "$(nproc)" -- --no-print-directory >/dev/null
}
