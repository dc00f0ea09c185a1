#!/usr/bin/env bash
# Installs the system packages tapstream's build and tests use, if missing:
#   libpcap-dev  filter compilation and the pcap capture backend (cgo)
#   tshark       (Wireshark) and capinfos: tests and the demo read files with them
#   tcpdump      tests read files with it; the benchmarks' baseline
#   iproute2     network namespaces for the tests
#   nginx-light  a real nginx in front of the collector (grpc_pass) in the tests
#   gcc, libc6-dev  cgo, for libpcap (Go builds without cgo when gcc is missing)
#   mount        mount/umount: the disk-full tests use a small tmpfs
# It uses apt-get (Debian/Ubuntu) and needs root; elsewhere it says what to install.
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in libpcap-dev gcc libc6-dev tshark tcpdump iproute2 nginx-light mount "$@"; do
  have_pkg "$p" || need+=("$p")
done
[ ${#need[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "tapstream needs these packages (or your system's equivalents): ${need[*]}" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "installing ${need[*]} needs root" >&2; exit 1; }
  sudo="sudo"
fi
echo "installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# tshark asks whether non-root users may capture; answer no.
echo "wireshark-common wireshark-common/install-setuid boolean false" | $sudo debconf-set-selections
# Packages must not start services (nginx) on this machine: the tests run
# their own. policy-rc.d tells invoke-rc.d so, for the install only; one
# that is already there (Docker's Debian images have it) is left alone.
# TAPSTREAM_POLICY_RC_D moves it, for scripts/deps_test.go.
policy=${TAPSTREAM_POLICY_RC_D:-/usr/sbin/policy-rc.d}
if [ ! -e "$policy" ]; then
  trap '$sudo rm -f "$policy"' EXIT
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod +x "$policy"
fi
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "installed ${need[*]}" >&2
exit 0
