#!/usr/bin/env bash
# Installs the Debian packages that `kubefit-sandbox` needs (idempotent, fast when all is present).
# Called on every `make test`, so the common path must do nothing but a few checks.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# package -> a file it installs (dpkg -s is slower and also reports half-removed packages)
declare -A PACKAGE_FILES=(
  [etcd-server]=/usr/bin/etcd
  [golang-go]=/usr/bin/go
  [rsync]=/usr/bin/rsync
  [openssl]=/usr/bin/openssl
  [prometheus]=/usr/bin/promtool
  [make]=/usr/bin/make
)
DEB_SRC_FILE=/etc/apt/sources.list.d/kubefit-bookworm-src.sources
DEBIAN_SOURCES=/etc/apt/sources.list.d/debian.sources

missing=()
for package in "${!PACKAGE_FILES[@]}"; do
  [ -x "${PACKAGE_FILES[$package]}" ] || missing+=("$package")
done
# `make` creates the virtualenv with python3 -m venv; Debian ships venv/ensurepip separately.
if ! command -v python3 >/dev/null 2>&1; then
  missing+=(python3 python3-venv)
elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi

# `apt-get source kubernetes` needs a deb-src entry for bookworm main.
has_deb_src() {
  grep -rqsE '^\s*(deb-src|Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null
}

need_update=0
if ! has_deb_src; then
  uris="http://deb.debian.org/debian"
  signed_by="/usr/share/keyrings/debian-archive-keyring.gpg"
  if [ -f "$DEBIAN_SOURCES" ]; then
    # first stanza of debian.sources is bookworm main; reuse its mirror and key
    uris=$(awk '/^URIs:/{print $2; exit}' "$DEBIAN_SOURCES")
    signed_by=$(awk '/^Signed-By:/{print $2; exit}' "$DEBIAN_SOURCES")
  fi
  echo "setup-system: adding deb-src for bookworm main ($uris) in $DEB_SRC_FILE"
  printf 'Types: deb-src\nURIs: %s\nSuites: bookworm\nComponents: main\nSigned-By: %s\n' \
    "$uris" "$signed_by" | $SUDO tee "$DEB_SRC_FILE" >/dev/null
  need_update=1
fi
# deb-src entry present but its index never fetched (e.g. added by hand without an update)
if ! ls /var/lib/apt/lists/*_Sources >/dev/null 2>&1 && ! ls /var/lib/apt/lists/*_Sources.* >/dev/null 2>&1; then
  need_update=1
fi
if [ ${#missing[@]} -gt 0 ]; then need_update=1; fi

if [ "$need_update" -eq 1 ]; then
  echo "setup-system: apt-get update"
  $SUDO apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-system: installing ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # kubefit needs the prometheus package for promtool and for the binary its tests start on loopback; the
  # server the package starts under systemd (port 9090, every interface) is not wanted: stop what we started.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    echo "setup-system: stopping and disabling the prometheus service the package started"
    $SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
fi
if [ "$need_update" -eq 0 ]; then
  echo "setup-system: all system packages present"
fi
