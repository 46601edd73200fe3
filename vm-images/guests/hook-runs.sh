#!/bin/bash
# Guest script: how often dptrace's default hooks run per packet on this kernel, the bench's
# "kernel time in the tracer's programs" for kernels the host does not run. 64-byte UDP
# datagrams (iperf3, paced) from one namespace to a socket in another over a veth pair; the kernel's
# BPF run-time statistics count the runs of the programs dptrace holds (/proc/PID/fdinfo).
#   vm-images/run-in-vm.sh --copy target/release/dptrace:/usr/bin/dptrace \
#     --copy "$(command -v iperf3)":/usr/bin/iperf3 vm-images/guests/hook-runs.sh
# Also runs on the host as root (it uses namespaces hr-a/hr-b of its own). Extra arguments for
# `dptrace trace` come from $HOOK_RUNS_ARGS.
set -u
echo "kernel: $(uname -r)"
cleanup() { ip netns del hr-a 2>/dev/null; ip netns del hr-b 2>/dev/null; }
trap cleanup EXIT
cleanup
ip netns add hr-a && ip netns add hr-b || exit 2
ip -n hr-a link add v0 type veth peer name v1 netns hr-b
ip -n hr-a addr add 10.78.0.1/24 dev v0; ip -n hr-b addr add 10.78.0.2/24 dev v1
for ns in hr-a hr-b; do ip -n $ns link set lo up; done
ip -n hr-a link set v0 up; ip -n hr-b link set v1 up
sleep 1

stats=/proc/sys/kernel/bpf_stats_enabled
old_stats=$(cat $stats)
# shellcheck disable=SC2086
dptrace trace --quiet ${HOOK_RUNS_ARGS:-} >/dev/null 2>/tmp/hook-runs.err & tracer=$!
for _ in $(seq 100); do grep -q "tracing on kernel" /tmp/hook-runs.err && break; sleep 0.2; done
grep "tracing on kernel" /tmp/hook-runs.err || { cat /tmp/hook-runs.err; exit 2; }

# "prog_id run_cnt run_time_ns" of every program the tracer holds.
runs() {
  for f in /proc/$tracer/fdinfo/*; do
    awk '/^prog_id:/{id=$2} /^run_cnt:/{c=$2} /^run_time_ns:/{t=$2} END{if (id != "" && c != "") print id, c, t}' "$f"
  done | sort -u -n
}
echo 1 > $stats
before=$(runs)
ip netns exec hr-b iperf3 -s -1 -p 5299 >/dev/null 2>&1 &
sleep 1
ip netns exec hr-a iperf3 -c 10.78.0.2 -p 5299 -u -b 2M -l 64 -t 3 -J > /tmp/hook-runs.json
after=$(runs)
echo "$old_stats" > $stats
kill -INT $tracer; wait $tracer

# Per datagram sent. Paced (about 3,900/s) so that even an emulated guest's receiver keeps up:
# its socket-buffer drops would run the drops hook and muddle the count.
field() { tr -d ' \t\n' < /tmp/hook-runs.json | grep -o "\"$1\":{[^}]*}" | grep -o "\"$2\":[0-9]*" | head -1 | cut -d: -f2; }
packets=$(field sum_sent packets)
echo "datagrams sent: ${packets:-?}, lost by the receiver: $(field sum_received lost_packets)"
echo "programs that ran (prog id: runs, ns per run):"
total=0
while read -r id cnt ns; do
  b=$(echo "$before" | awk -v id="$id" '$1 == id {print $2, $3}')
  c0=${b% *}; t0=${b#* }
  d=$((cnt - ${c0:-0})); t=$((ns - ${t0:-0}))
  [ "$d" -gt 0 ] || continue
  echo "  $id: $d, $((t / d))"
  total=$((total + d))
done <<< "$after"
echo "HOOK-RUNS total=$total packets=${packets:-0}"
if [ -n "${packets:-}" ] && [ "$packets" -gt 0 ]; then
  awk -v t="$total" -v p="$packets" 'BEGIN{printf "HOOK-RUNS per datagram sent: %.3f\n", t / p}'
fi
