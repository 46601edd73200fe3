#!/bin/bash
# Guest script of the kernel-compatibility matrix (`cargo xtask vm-test`).
#
# Runs dptrace's checks on the kernel it is on and prints their raw output in
# sections that the host parses from the serial console:
#
#   DPTRACE-MATRIX-BEGIN <name>
#   ...the command's stdout (JSON Lines for the dptrace sections)...
#   DPTRACE-MATRIX-END <name> rc=<exit status> ms=<milliseconds it took>
#
# and, after each, a section "<name>.stderr" with the last lines of its stderr.
# Sections: uname, features, check, lab, topology (what the forced runs use:
# `KEY VALUE` lines naming the server namespace's inode, the devices, addresses,
# ports and the sender's command name), and backend:<FAMILY=NAME> for each
# forced backend run, each followed by "DPTRACE-MATRIX-SENDER backend:<FAMILY=NAME>
# <pid>" when its test datagrams were sent (the host ties the evidence to all
# that).  Lines starting "OK:", "FAIL:" or "NOTE:" are for humans reading the
# console log; the host decides from the sections alone.
#
# In a VM (run-in-vm.sh copies the dptrace binary to /usr/bin/dptrace):
#   vm-images/run-in-vm.sh --copy target/release/dptrace:/usr/bin/dptrace vm-images/guests/matrix.sh
# On the host (as root; all traffic stays in namespaces this script creates):
#   DPTRACE=target/release/dptrace DPTRACE_MATRIX_HOST=1 bash vm-images/guests/matrix.sh
#
# Settings (environment, or /etc/dptrace-matrix.env in the guest):
#   DPTRACE                  the binary (default: dptrace from PATH)
#   DPTRACE_MATRIX_BACKENDS  forced runs, space-separated FAMILY=NAME (default below)
#   DPTRACE_FIELD            field scenarios guests/field.sh runs at the end (VM only; xtask
#                            copies field.sh to /usr/lib/dptrace-field/field.sh)
#   DPTRACE_MATRIX_HOST=1    not in a throwaway VM: leave tracefs and printk alone
set -u
[ -f /etc/dptrace-matrix.env ] && . /etc/dptrace-matrix.env
DPTRACE="${DPTRACE:-dptrace}"
BACKENDS="${DPTRACE_MATRIX_BACKENDS:-drops=tracepoint drops=tracepoint-noreason drops=fentry drops=kprobe netfilter=verdicts netfilter=kprobes netfilter=tracepoints links=sockets links=kprobes links=tracepoints}"
IN_VM=1
[ "${DPTRACE_MATRIX_HOST:-0}" = 1 ] && IN_VM=0

# Namespace names unique per run: on the host, other sessions may be running.
TAG="mx$$"
CLIENT="$TAG-c" SERVER="$TAG-s" SCRATCH="$TAG-f"
SERVER_V4=10.77.0.2 SERVER_V6=fd00:77::2 PORT=9999
# The netfilter runs' rules in the server namespace: nftables DROP and REJECT, iptables-legacy DROP.
NFT_DROP_PORT=9998 NFT_REJECT_PORT=6443 LEGACY_DROP_PORT=9997 LEGACY_RULE=0
BOGUS_LINK=dpt-bogus
WORK="$(mktemp -d /tmp/dptrace-matrix.XXXXXX)"
# The drops runs send their datagrams with bash under this name (a symlink: the kernel takes
# a task's comm from the name it was executed by), so their drops show who sent them.
SENDER_COMM=dpt-udp-send
ln -s "$(command -v bash)" "$WORK/$SENDER_COMM"

cleanup() {
  for ns in "$CLIENT" "$SERVER" "$SCRATCH"; do ip netns del "$ns" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# section NAME COMMAND...: run COMMAND, print its stdout and stderr as sections.
# Output is collected in files first so nothing interleaves with the markers.
section() {
  local name="$1" rc start end
  shift
  start="${EPOCHREALTIME//[.,]/}"   # microseconds
  "$@" >"$WORK/out" 2>"$WORK/err"
  rc=$?
  end="${EPOCHREALTIME//[.,]/}"
  echo "DPTRACE-MATRIX-BEGIN $name"
  cat "$WORK/out"
  echo "DPTRACE-MATRIX-END $name rc=$rc ms=$(((end - start) / 1000))"
  echo "DPTRACE-MATRIX-BEGIN $name.stderr"
  tail -n 40 "$WORK/err"
  echo "DPTRACE-MATRIX-END $name.stderr rc=0"
  return $rc
}

# features: which link kinds and bridge netfilter this kernel really offers,
# tried in a scratch namespace (this is what the matrix's module variants change).
features() {
  ip netns add "$SCRATCH" || return 2
  try_kind() {
    local kind="$1" err
    shift
    if err="$(ip -n "$SCRATCH" link add "mxf-$kind" "$@" 2>&1)"; then
      echo "$kind yes"
    else
      echo "$kind no: $err"
    fi
  }
  try_kind veth type veth peer name mxf-peer
  try_kind bridge type bridge
  try_kind vxlan type vxlan id 42 dstport 4789 local 127.0.0.1
  try_kind geneve type geneve id 42 remote 127.0.0.2
  try_kind wireguard type wireguard
  # br_netfilter registers these sysctls when it is loaded (init modprobed it).
  if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
    echo "br_netfilter yes"
  else
    echo "br_netfilter no: /proc/sys/net/bridge/bridge-nf-call-iptables does not exist"
  fi
}

# Two namespaces joined by a veth: the client sends UDP to a port nothing
# listens on in the server namespace, so the server's kernel drops it as NO_SOCKET.
make_topology() {
  ip netns add "$CLIENT" && ip netns add "$SERVER" || return 1
  ip -n "$CLIENT" link add c0 type veth peer name s0 netns "$SERVER" || return 1
  for ns in "$CLIENT" "$SERVER"; do ip -n "$ns" link set lo up; done
  ip -n "$CLIENT" addr add 10.77.0.1/24 dev c0
  ip -n "$SERVER" addr add "$SERVER_V4/24" dev s0
  ip -n "$CLIENT" addr add fd00:77::1/64 dev c0 nodad
  ip -n "$SERVER" addr add "$SERVER_V6/64" dev s0 nodad
  ip -n "$CLIENT" link set c0 up && ip -n "$SERVER" link set s0 up
  # For the netfilter backends: native nftables rules WITHOUT counters, so only the kernel
  # can tell which table and chain gave the verdict (a DROP on udp/9998, a REJECT on tcp/6443).
  ip netns exec "$SERVER" nft -f - <<NFT || return 1
table inet mxguard {
  chain input {
    type filter hook input priority 0; policy accept;
    udp dport $NFT_DROP_PORT drop
    tcp dport $NFT_REJECT_PORT reject with tcp reset
  }
}
NFT
  # And an iptables-legacy DROP, where the legacy tool exists.
  if command -v iptables-legacy >/dev/null; then
    ip netns exec "$SERVER" iptables-legacy -w -A INPUT -p udp --dport "$LEGACY_DROP_PORT" -j DROP || return 1
    LEGACY_RULE=1
  fi
}

# What the forced runs use, for the host to tie their evidence to: the server namespace's
# inode (as dptrace reports a netns), its device, addresses and ports, and the sender's name.
topology() {
  local server_netns client_netns
  server_netns="$(stat -L -c %i "/run/netns/$SERVER")" || return 1
  client_netns="$(stat -L -c %i "/run/netns/$CLIENT")" || return 1
  echo "server_netns $server_netns"
  echo "server_dev s0"
  echo "client_netns $client_netns"
  echo "client_dev c0"
  echo "server_v4 $SERVER_V4"
  echo "server_v6 $SERVER_V6"
  echo "port $PORT"
  echo "sender_comm $SENDER_COMM"
  echo "nft_drop_port $NFT_DROP_PORT"
  echo "nft_reject_port $NFT_REJECT_PORT"
  [ $LEGACY_RULE = 1 ] && echo "legacy_drop_port $LEGACY_DROP_PORT"
  echo "bogus_link $BOGUS_LINK"
}

forced_backend() {
  case "$1" in
    netfilter=*)
      # Traced without a namespace filter: the client's received RST is part of the evidence.
      "$DPTRACE" trace --json --backend "$1" -- ip netns exec "$CLIENT" bash -c \
        "echo x > /dev/udp/$SERVER_V4/$NFT_DROP_PORT; echo x > /dev/udp/$SERVER_V4/$LEGACY_DROP_PORT; timeout 2 bash -c 'echo > /dev/tcp/$SERVER_V4/$NFT_REJECT_PORT'; sleep 0.3"
      ;;
    links=*)
      # A link kind no kernel has: the request, the kernel's message and EOPNOTSUPP.
      "$DPTRACE" trace --json --backend "$1" --netns "$CLIENT" -- \
        ip netns exec "$CLIENT" bash -c "ip link add $BOGUS_LINK type bogus 2>/dev/null; true"
      ;;
    *)
      # `ip netns exec` execs the sender, and bash sends from its own process: $$ is the
      # pid the drops must show (without BTF that and the comm are all that tie them to us).
      rm -f "$WORK/sender.pid"
      "$DPTRACE" trace --json --backend "$1" --netns "$SERVER" -- \
        ip netns exec "$CLIENT" "$WORK/$SENDER_COMM" -c \
        "echo \$\$ > $WORK/sender.pid; echo x > /dev/udp/$SERVER_V4/$PORT; echo x > /dev/udp/$SERVER_V6/$PORT"
      ;;
  esac
}

# A human verdict for one forced run (the host makes its own from the JSON).
say_backend() {
  local backend="$1" rc="$2"
  if [ "$rc" = 2 ] && grep -qiE "unexpected argument '--backend'|invalid value .* for '--backend" "$WORK/err"; then
    echo "NOTE: $backend: backend not available in this dptrace"
  elif [ "${backend%%=*}" = netfilter ]; then
    if grep '"rule":"netfilter-drop"' "$WORK/out" | grep -q ":$NFT_DROP_PORT\"" && grep -q '"rule":"reject-by-rule"' "$WORK/out"; then
      echo "OK: $backend: the DROP and the REJECT were told apart"
    else
      echo "FAIL: $backend: no netfilter-drop for udp/$NFT_DROP_PORT or no reject-by-rule for tcp/$NFT_REJECT_PORT (exit $rc)"
    fi
  elif [ "${backend%%=*}" = links ]; then
    if grep '"rule":"link-kind-unsupported"' "$WORK/out" | grep -q bogus; then
      echo "OK: $backend: the failed creation of a bogus link was explained"
    else
      echo "FAIL: $backend: no link-kind-unsupported for the bogus link (exit $rc)"
    fi
  elif grep '"type":"event"' "$WORK/out" | grep -q "\"dport\":$PORT"; then
    echo "OK: $backend: the test drops were seen"
  elif grep '"type":"event"' "$WORK/out" | grep -q '"reason":"NO_SOCKET"'; then
    echo "OK: $backend: NO_SOCKET drops seen, without their flow"
  else
    echo "FAIL: $backend: no drop of the test packets (exit $rc): $(grep -m1 error "$WORK/err")"
  fi
}

if [ $IN_VM = 1 ]; then
  # Kernel messages on the console could split a JSON line: keep only emergencies.
  echo 1 >/proc/sys/kernel/printk
  # dptrace must mount tracefs itself (check reports tracefs_mounted_by_dptrace).
  umount /sys/kernel/tracing 2>/dev/null
  umount /sys/kernel/debug 2>/dev/null
fi

section uname uname -r
section features features
section check "$DPTRACE" check --json
rc=$?
case $rc in
  0 | 1) echo "OK: dptrace check exited $rc (1 = it found problems on this kernel)" ;;
  *) echo "FAIL: dptrace check exited $rc" ;;
esac
if section lab "$DPTRACE" lab run --all --json; then
  echo "OK: dptrace lab run --all diagnosed every scenario"
else
  echo "FAIL: dptrace lab run --all did not diagnose every scenario"
fi

if make_topology; then
  sleep 1   # let the veth carrier come up (IPv6 is nodad)
  section topology topology
  for backend in $BACKENDS; do
    section "backend:$backend" forced_backend "$backend"
    rc=$?
    [ -s "$WORK/sender.pid" ] && echo "DPTRACE-MATRIX-SENDER backend:$backend $(cat "$WORK/sender.pid")"
    rm -f "$WORK/sender.pid"
    say_backend "$backend" $rc
  done
else
  echo "FAIL: could not build the client/server namespaces"
fi
# The field suite's VM part: real components that act on the whole machine (systemd-udevd,
# firewalld) or need this kernel (wg-quick without WireGuard), where matrix.toml's
# `[kernel.expect] field` lists scenarios for this row (run-in-vm.sh --field put them here).
if [ $IN_VM = 1 ] && [ -n "${DPTRACE_FIELD:-}" ]; then
  bash /usr/lib/dptrace-field/field.sh
fi
echo "DPTRACE-MATRIX-DONE"
exit 0
