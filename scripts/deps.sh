#!/usr/bin/env bash
# Installs the system packages tapstream's build and tests use, if missing:
#   libpcap-dev  filter compilation and the pcap capture backend (cgo)
#   tshark       (Wireshark) and capinfos: tests and the demo read files with them
#   tcpdump      baseline for benchmarks
#   iproute2     network namespaces for the tests
#   nginx-light  a real nginx in front of the collector (grpc_pass) in the tests
# It uses apt-get (Debian/Ubuntu) and needs root; elsewhere it says what to install.
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in libpcap-dev tshark tcpdump iproute2 nginx-light "$@"; do
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
# their own. policy-rc.d tells invoke-rc.d so, for the install only.
added_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  added_policy=1
fi
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
[ -n "$added_policy" ] && $sudo rm -f /usr/sbin/policy-rc.d
