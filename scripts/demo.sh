#!/usr/bin/env bash
# The main job on one host, with embedded defaults: a collector with a
# temporary data directory, and an agent capturing on the loopback interface
# for a few seconds while this script sends it some UDP traffic. Then it
# shows where the pcap is and what tshark/capinfos make of it.
set -euo pipefail
cd "$(dirname "$0")/.."

port=${DEMO_PORT:-7447}
udp=${DEMO_UDP_PORT:-5599}
bin=./bin/tapstream

if [ "$(id -u)" -ne 0 ]; then
  echo "capturing packets needs root (or CAP_NET_RAW): run 'sudo make demo'" >&2
  exit 1
fi
if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
  echo "port $port is in use; run with DEMO_PORT=<free port> make demo" >&2
  exit 1
fi

data=$(mktemp -d /tmp/tapstream-demo.XXXXXX)
log=$data/logs
mkdir -p "$log"
collector_pid=""
cleanup() { [ -n "$collector_pid" ] && kill "$collector_pid" 2>/dev/null || true; }
trap cleanup EXIT

echo "==> collector (TLS, with a CA of its own): $bin collector --listen 127.0.0.1:$port --data $data"
$bin collector --listen 127.0.0.1:$port --data "$data" 2>"$log/collector.log" &
collector_pid=$!
for _ in $(seq 100); do grep -q "collector identity" "$log/collector.log" && break; sleep 0.1; done
pin=$($bin pin --data "$data")
echo "    pin: $pin"

echo "==> token: $bin token create --data $data --role agent --name demo"
(umask 077; $bin token create --data "$data" --role agent --name demo | tail -1 | awk '{print $NF}' >"$data/agent.token")
echo "    token: $(head -c 20 "$data/agent.token")... (in $data/agent.token)"

echo "==> agent: $bin agent --connect 127.0.0.1:$port --pin $pin --token-file $data/agent.token --source lo:name=demo --filter 'udp port $udp' --duration 4s"
$bin agent --connect 127.0.0.1:$port --pin "$pin" --token-file "$data/agent.token" --source lo:name=demo --filter "udp port $udp" --duration 4s \
  --spool-dir "$data/spool" 2>"$log/agent.log" &
agent_pid=$!
for _ in $(seq 50); do grep -q "msg=streaming" "$log/agent.log" && break; sleep 0.1; done

echo "==> sending 200 UDP datagrams to 127.0.0.1:$udp"
for i in $(seq 1 200); do
  printf 'tapstream demo datagram %03d\n' "$i" >/dev/udp/127.0.0.1/$udp || true
  [ $((i % 20)) -eq 0 ] && sleep 0.1
done

wait "$agent_pid"
kill -TERM "$collector_pid"; wait "$collector_pid" || true
collector_pid=""

echo
echo "==> agent summary"
grep 'source finished' "$log/agent.log" | sed 's/^/    /'
echo "==> collector summary"
grep 'source totals' "$log/collector.log" | sed 's/^/    /'
file=$(find "$data/pcap" -name '*.pcap' | head -1)
echo
echo "==> pcap written: $file"
if command -v capinfos >/dev/null; then
  capinfos -c -u -a -e -E "$file" 2>/dev/null | sed 's/^/    /' || true
fi
if command -v tshark >/dev/null; then
  echo "==> first packets (tshark -r $file)"
  tshark -r "$file" -c 5 2>/dev/null | sed 's/^/    /'
fi
echo "==> catalog (tapstream files --data $data)"
"$bin" files --data "$data" 2>&1 | sed 's/^/    /'
echo
echo "Logs: $log   Data: $data"
