#!/bin/bash
# The field suite's VM part: real, unmodified components that act on a whole machine (they
# would change the host's devices or firewall), driven through the field reports inside a
# throwaway guest, with dptrace tracing them. matrix.sh runs it at its end with the scenarios
# matrix.toml lists for the row (`[kernel.expect] field`); by hand:
#
#   vm-images/run-in-vm.sh --field udev --field cni --copy target/release/dptrace:/usr/bin/dptrace \
#       --copy vm-images/guests/field.sh:/usr/lib/dptrace-field/field.sh vm-images/guests/field.sh
#   (DPTRACE_FIELD="udev-veth-mac udev-veth-mac-healthy" in /etc/dptrace-matrix.env picks them)
#
# Scenarios (run-in-vm.sh --field puts their components into the guest):
#   udev-veth-mac          field report 5: Debian's systemd-udevd with its stock 99-default.link
#                          (MACAddressPolicy=persistent) rewrites the MAC of the host veth the
#                          real CNI bridge plugin just created; the plugin's CHECK fails with
#                          "Interface vethXXXX Mac doesn't match".          --field udev --field cni
#   udev-veth-mac-healthy  the same with /etc/systemd/network/10-veth.link (Driver=veth,
#                          MACAddressPolicy=none): CHECK passes.
#   wg-quick-unsupported   field report 1: the real `wg-quick up` on a kernel without WireGuard
#                          (its `ip link add … type wireguard` fails).         --field wg-quick
#   wg-quick-healthy       `wg-quick up` and `down` on a kernel with WireGuard.
#   firewalld-blocked      field report 2: Debian's firewalld (nftables backend, default zone
#                          public) on the node, with an ICMP block on echo-request; a client
#                          namespace connects to the API server port 6443 and pings the node.
#                                                                             --field firewalld
#   firewalld-healthy      the same after `firewall-cmd --add-port=6443/tcp` and without the
#                          ICMP block: both get through.
#   xdp-filter-dispatcher  field report 4: xdp-tools' `xdp-filter` (native mode, a port) on a
#                          kernel where libxdp runs its dispatcher (BTF, freplace): the device's
#                          program is `xdp_dispatcher`, the filter runs as its component; dptrace
#                          must name the filter program that dropped.       --field xdp-tools
#
# A component's setup (starting systemd-udevd, firewalld) is a section `field-setup:NAME`
# (its FAIL: lines say why its scenarios did not run). For each scenario it prints, in
# matrix.sh's section format, `field:ID` (dptrace trace --json's
# output while the component ran), `field:ID.tool` (what the real tool did and printed, as
# `KEY VALUE` lines: `rc:STEP N`, `out:STEP LINE`, and facts such as `mac:WHEN IFNAME MAC`) and
# their stderr sections, then one line
#
#   DPTRACE-FIELD-ROW {"id":…,"component":…,"version":…,"scenario":…,"kernel":…}
#
# per component involved (version from the package's control file). xtask (vm/field.rs)
# judges the sections: the expected finding (rule, severity, actor) in a fault scenario, no
# warning or error in a healthy one, and that the real tool failed or passed as it should.
set -u
[ -f /etc/dptrace-matrix.env ] && . /etc/dptrace-matrix.env
DPTRACE="${DPTRACE:-dptrace}"
SCENARIOS="${DPTRACE_FIELD:-${1:-}}"
INFO=/usr/share/dptrace-field
KERNEL="$(uname -r)"
CNI_BIN=/usr/lib/cni
# `field.sh --step ID` is the part dptrace traces: it shares WORK and TOOL with its caller.
STEP_MODE=0
[ "${1:-}" = --step ] && STEP_MODE=1

# section NAME COMMAND...: as in matrix.sh.
section() {
  local name="$1" rc start end
  shift
  start="${EPOCHREALTIME//[.,]/}"
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

json_str() {
  local s="$1"
  s="${s//\\/\\\\}"; s="${s//\"/\\\"}"; s="${s//$'\n'/\\n}"; s="${s//$'\t'/\\t}"; s="${s//$'\r'/}"
  printf '"%s"' "$s"
}

# The Version field of a component's package (run-in-vm.sh copied its control fields).
version_of() { sed -n 's/^Version: //p' "$INFO/$1.control" 2>/dev/null | head -n1; }

# row ID PACKAGE SCENARIO-TEXT
row() {
  local version
  version="$(version_of "$2")"
  echo "DPTRACE-FIELD-ROW {\"id\":$(json_str "$1"),\"component\":$(json_str "$2"),\"version\":$(json_str "${version:-unknown}"),\"scenario\":$(json_str "$3"),\"kernel\":$(json_str "$KERNEL")}"
}

# The tool log of the running scenario: `KEY VALUE` lines.
TOOL="${TOOL:-}"
note() { echo "$*" >>"$TOOL"; }
# step NAME COMMAND...: runs a step of the real tool, noting its exit status and output.
step() {
  local name="$1" rc
  shift
  "$@" >"$WORK/step.out" 2>&1
  rc=$?
  note "rc:$name $rc"
  # (awk ends the last line even where the tool's output does not.)
  awk -v p="out:$name " '{print p $0}' "$WORK/step.out" >>"$TOOL"
  return $rc
}

# scenario ID [DPTRACE-OPTION...]: traces `field.sh --step ID` (its steps log to the tool
# section) under `dptrace trace --json`.
scenario() {
  local id="$1"
  shift
  TOOL="$WORK/tool-$id"
  : >"$TOOL"
  # What was configured before the trace (firewall-cmd), first in the tool section.
  if [ "${scenario_pre:-0}" = 1 ]; then cat "$WORK/pre" >>"$TOOL"; fi
  export TOOL WORK
  section "field:$id" "$DPTRACE" trace --json "$@" -- bash "$WORK/field.sh" --step "$id"
  local rc=$?
  echo "DPTRACE-MATRIX-BEGIN field:$id.tool"
  cat "$TOOL"
  echo "DPTRACE-MATRIX-END field:$id.tool rc=$rc"
}

# ------------------------------------------------------------------------- systemd-udevd

UDEVD=/lib/systemd/systemd-udevd
udevd_start() {
  # What a booted Debian has and udevd needs: /dev/fd, a machine-id (the persistent MAC is a
  # hash of the interface name and it), /run/udev.
  [ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
  if [ ! -s /etc/machine-id ]; then
    tr -d '-' </proc/sys/kernel/random/uuid >/etc/machine-id
  fi
  mkdir -p /run/udev /etc/systemd/network
  "$UDEVD" --daemon --resolve-names=never || return 1
  udevadm control --ping --timeout=30
}

udevd_stop() {
  [ -x "$UDEVD" ] || return 0
  udevadm control --exit --timeout=10 >/dev/null 2>&1 || true
}

# CNI: the bridge plugin with host-local IPAM, called as a runtime calls it.
CNI_CONF='{"cniVersion":"1.0.0","name":"fieldnet","type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":false,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.88.0.0/16"}]],"routes":[{"dst":"0.0.0.0/0"}]}}'
# cni COMMAND CONTAINER-ID NETNS [PREV-RESULT-FILE]
cni() {
  local conf="$CNI_CONF"
  if [ -n "${4:-}" ]; then conf="${conf%\}},\"prevResult\":$(cat "$4")}"; fi
  CNI_COMMAND="$1" CNI_CONTAINERID="$2" CNI_NETNS="/run/netns/$3" CNI_IFNAME=eth0 CNI_PATH="$CNI_BIN" \
    "$CNI_BIN/bridge" <<<"$conf"
}

mac_of() { cat "/sys/class/net/$1/address" 2>/dev/null; }

# Inside dptrace: a pod's network as a runtime sets it up: ADD, CHECK with ADD's result, DEL.
# Between ADD and CHECK, udevd handles the new veth's "add" event like on any Debian node.
step_cni_pod() {
  local id="$1" netns="$2" veth
  step add cni ADD "$id" "$netns" || return 1
  cp "$WORK/step.out" "$WORK/$id.result"
  # The host veth: the interface of ADD's result without a sandbox that is not the bridge.
  veth="$(grep -o '"name": *"veth[0-9a-f]*"' "$WORK/$id.result" | head -n1 | grep -o 'veth[0-9a-f]*')"
  note "veth $veth"
  note "mac:add $veth $(grep -A1 "\"name\": *\"$veth\"" "$WORK/$id.result" | grep -o '[0-9a-f]\{2\}\(:[0-9a-f]\{2\}\)\{5\}' | head -n1)"
  # The runtime's next CHECK comes later; udev's queue is empty by then.
  udevadm settle --timeout=30
  note "mac:check $veth $(mac_of "$veth")"
  step check cni CHECK "$id" "$netns" "$WORK/$id.result"
  step del cni DEL "$id" "$netns" "$WORK/$id.result"
  return 0
}

udev_setup() {
  [ -x "$UDEVD" ] || { echo "FAIL: systemd-udevd is not in this guest (run-in-vm.sh --field udev)"; return 1; }
  [ -x "$CNI_BIN/bridge" ] || { echo "FAIL: the CNI plugins are not in this guest (run-in-vm.sh --field cni)"; return 1; }
  udevd_start || { echo "FAIL: systemd-udevd did not start"; return 1; }
  # The node's first pod created cni0 long ago (udev gave the bridge its persistent MAC
  # then): a warm-up pod, outside the traces.
  ip netns add fld-warm
  if ! cni ADD warm fld-warm >"$WORK/warm.result" 2>&1; then
    echo "FAIL: warm-up CNI ADD: $(cat "$WORK/warm.result")"
    return 1
  fi
  udevadm settle --timeout=30
}

udev_teardown() {
  cni DEL warm fld-warm <"$WORK/warm.result" >/dev/null 2>&1
  ip netns del fld-warm 2>/dev/null
  udevd_stop
}

# ------------------------------------------------------------------------------ wg-quick

wg_conf() {
  [ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
  mkdir -p /etc/wireguard && chmod 700 /etc/wireguard
  (umask 077; cat >/etc/wireguard/wg0.conf <<EOF
[Interface]
PrivateKey = $(wg genkey)
Address = 10.99.0.1/24
ListenPort = 51820

[Peer]
PublicKey = $(wg genkey | wg pubkey)
AllowedIPs = 10.99.0.2/32
Endpoint = 192.0.2.10:51820
EOF
  )
}

# ----------------------------------------------------------------------------- firewalld

# The chroot firewalld runs in: /usr is an overlay of the unpacked packages over the host's
# /usr (9p, read-only), /etc the packages' plus what run-in-vm.sh took from the host's.
FW=/run/fw
FW_PKG=/usr/lib/dptrace-field/firewalld
NODE_IP=10.89.0.1 CLIENT_IP=10.89.0.2 CLIENT_NS=fld-client APISERVER_PORT=6443
# (Absolute paths: busybox's chroot runs its own applet of a name, e.g. ping, before PATH.)
fw() { chroot "$FW" "$@"; }

firewalld_setup() {
  [ -d "$FW_PKG/usr" ] || { echo "FAIL: firewalld is not in this guest (run-in-vm.sh --field firewalld)"; return 1; }
  mkdir -p /mnt/host-usr "$FW/usr" || return 1
  mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose hostusr /mnt/host-usr \
    || { echo "FAIL: cannot mount the host's /usr (9p tag hostusr)"; return 1; }
  mount -t overlay overlay -o "lowerdir=$FW_PKG/usr:/mnt/host-usr" "$FW/usr" \
    || { echo "FAIL: cannot mount the overlay of firewalld over the host's /usr"; return 1; }
  for d in bin sbin lib lib64; do ln -sfn "usr/$d" "$FW/$d"; done
  cp -a "$FW_PKG/etc" "$FW/etc"
  mkdir -p "$FW"/{proc,sys,dev,run,tmp,root,var/lib,var/log}
  mount -t proc proc "$FW/proc" && mount -t sysfs sysfs "$FW/sys" && mount --bind /dev "$FW/dev" \
    && mount -t tmpfs tmpfs "$FW/run" && mount -t tmpfs tmpfs "$FW/tmp" || return 1
  ln -sfn ../run "$FW/var/run"
  mkdir -p "$FW/run/dbus"
  # The node's own system bus (firewall-cmd speaks D-Bus to firewalld), then firewalld.
  fw /usr/bin/dbus-daemon --system --nofork --nopidfile --nosyslog >"$WORK/dbus.log" 2>&1 &
  local i
  for i in $(seq 50); do [ -S "$FW/run/dbus/system_bus_socket" ] && break; sleep 0.2; done
  local t0=$SECONDS
  fw /usr/sbin/firewalld --nofork --nopid --log-target console >"$WORK/firewalld.log" 2>&1 &
  # It applies its ruleset within seconds, then registers a D-Bus object per zone, service,
  # policy, helper and ICMP type (about 250; a minute or more under TCG) before it answers.
  while [ $((SECONDS - t0)) -lt 240 ]; do
    [ "$(fw /usr/bin/firewall-cmd --state 2>/dev/null)" = running ] && break
    sleep 2
  done
  if [ "$(fw /usr/bin/firewall-cmd --state 2>&1)" != running ]; then
    echo "FAIL: firewalld did not start: $(fw /usr/bin/firewall-cmd --state 2>&1)"
    tail -n 20 "$WORK/firewalld.log" "$WORK/dbus.log"
    return 1
  fi
  echo "NOTE: firewalld running after $((SECONDS - t0)) s"

  # The node (this guest's namespace, default zone public) and a client beside it.
  ip netns add "$CLIENT_NS" || return 1
  ip link add fwn0 type veth peer name fwc0 netns "$CLIENT_NS" || return 1
  ip addr add "$NODE_IP/24" dev fwn0 && ip link set fwn0 up
  ip -n "$CLIENT_NS" link set lo up
  ip -n "$CLIENT_NS" addr add "$CLIENT_IP/24" dev fwc0 && ip -n "$CLIENT_NS" link set fwc0 up
  # The API server's port: an HTTP server answers /healthz there (firewalld, not the lack
  # of a listener, is what the client must run into).
  mkdir -p "$WORK/www" && echo ok >"$WORK/www/healthz"
  httpd -p "$NODE_IP:$APISERVER_PORT" -h "$WORK/www" || return 1
}

firewalld_teardown() {
  fw /usr/bin/firewall-cmd --state >/dev/null 2>&1 || return 0
  pkill -f /usr/sbin/firewalld
  pkill httpd
  sleep 1
  pkill dbus-daemon
}

# firewalld_config NAME OPTION...: a runtime change with firewall-cmd (one per call: it takes
# one zone action at a time), before the trace; noted in the tool section as step NAME.
# (Each call takes about 4 s under TCG.)
firewalld_config() {
  local name="$1"
  shift
  fw /usr/bin/firewall-cmd "$@" >"$WORK/fwcmd.out" 2>&1
  note "rc:$name $?"
  awk -v p="out:$name " '{print p $0}' "$WORK/fwcmd.out" >>"$TOOL"
}

# Inside dptrace: the client asks the API server's port for /healthz and pings the node.
step_client() {
  step healthz ip netns exec "$CLIENT_NS" timeout 10 bash -c "exec 3<>/dev/tcp/$NODE_IP/$APISERVER_PORT && printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3 && cat <&3"
  step ping ip netns exec "$CLIENT_NS" chroot "$FW" /usr/bin/ping -c 1 -W 2 "$NODE_IP"
  return 0
}

# ----------------------------------------------------------------------------- xdp-tools

XDP_NS=fld-xdp XDP_PORT=47251
xdp_setup() {
  command -v xdp-filter >/dev/null || { echo "FAIL: xdp-filter is not in this guest (run-in-vm.sh --field xdp-tools)"; return 1; }
  # libxdp keeps its dispatcher's links pinned in bpffs (without it: no dispatcher).
  mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || return 1
  ip netns add "$XDP_NS" || return 1
  ip link add xdpv0 type veth peer name xdpv1 netns "$XDP_NS" || return 1
  ip addr add 10.90.0.1/24 dev xdpv0 && ip link set xdpv0 up
  ip -n "$XDP_NS" link set lo up
  ip -n "$XDP_NS" addr add 10.90.0.2/24 dev xdpv1 && ip -n "$XDP_NS" link set xdpv1 up
}

xdp_teardown() {
  xdp-filter unload xdpv0 >/dev/null 2>&1
  ip link del xdpv0 2>/dev/null
  ip netns del "$XDP_NS" 2>/dev/null
}

# Inside dptrace: xdp-filter loads in native mode and drops a UDP port; the peer sends to it.
step_xdp_filter() {
  step load xdp-filter load xdpv0 --mode native || return 1
  step port xdp-filter port "$XDP_PORT" || return 1
  step link ip -d link show xdpv0
  step send ip netns exec "$XDP_NS" bash -c "for i in 1 2 3 4 5; do echo dptrace >/dev/udp/10.90.0.1/$XDP_PORT; sleep 0.1; done"
  # Time for dptrace to read the device's program while it is still attached.
  sleep 2
  step status xdp-filter status
  step unload xdp-filter unload xdpv0
  return 0
}

# ---------------------------------------------------------------------- the traced steps

# field.sh --step ID: runs under dptrace trace.
if [ $STEP_MODE = 1 ]; then
  case "$2" in
    udev-veth-mac) ip netns add "fld-pod1-$$" && step_cni_pod "pod1-$$" "fld-pod1-$$" ;;
    udev-veth-mac-healthy) ip netns add fld-pod2 && step_cni_pod pod2 fld-pod2 ;;
    wg-quick-unsupported) step up wg-quick up wg0 ;;
    wg-quick-healthy) step up wg-quick up wg0 && step show wg show wg0 && step down wg-quick down wg0 ;;
    firewalld-blocked | firewalld-healthy) step_client ;;
    xdp-filter-dispatcher) step_xdp_filter ;;
  esac
  exit 0
fi

# ---------------------------------------------------------------------------------- main

WORK="$(mktemp -d /tmp/dptrace-field.XXXXXX)"
cleanup() {
  udevd_stop
  for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^fld-/ {print $1}'); do ip netns del "$ns"; done
  rm -rf "$WORK"
}
trap cleanup EXIT
cp "$0" "$WORK/field.sh"
echo "DPTRACE-MATRIX-BEGIN field"
echo "scenarios $SCENARIOS"
echo "DPTRACE-MATRIX-END field rc=0"
has() { [[ " $SCENARIOS " == *" $1 "* ]]; }

if has udev-veth-mac || has udev-veth-mac-healthy; then
  if section field-setup:udev udev_setup; then
    if has udev-veth-mac; then
      rm -f /etc/systemd/network/10-veth.link
      # A race, as on a node: udevd's worker rewrites the MAC some milliseconds after the
      # veth appears, the plugin reads it back just after creating it. Where udevd wins,
      # ADD records the new MAC and the fault does not happen: then a new pod (at most 3).
      for attempt in 1 2 3; do
        scenario udev-veth-mac
        grep -qx 'rc:check 0' "$WORK/tool-udev-veth-mac" || break
        echo "NOTE: udev-veth-mac attempt $attempt: udevd rewrote the MAC before ADD read it, CHECK passed; another pod"
      done
      row udev-veth-mac udev "systemd-udevd with Debian's 99-default.link (MACAddressPolicy=persistent) rewrites the MAC of the host veth the CNI bridge plugin created (ADD, CHECK, DEL)"
      row udev-veth-mac containernetworking-plugins "bridge plugin ADD, CHECK, DEL while systemd-udevd (99-default.link, MACAddressPolicy=persistent) rewrites the host veth's MAC"
    fi
    if has udev-veth-mac-healthy; then
      printf '[Match]\nDriver=veth\n\n[Link]\nMACAddressPolicy=none\n' >/etc/systemd/network/10-veth.link
      udevadm control --reload
      scenario udev-veth-mac-healthy
      rm -f /etc/systemd/network/10-veth.link
      row udev-veth-mac-healthy udev "systemd-udevd with 10-veth.link (Driver=veth, MACAddressPolicy=none) beside 99-default.link while the CNI bridge plugin runs ADD, CHECK, DEL"
      row udev-veth-mac-healthy containernetworking-plugins "bridge plugin ADD, CHECK, DEL with systemd-udevd running and 10-veth.link (MACAddressPolicy=none)"
    fi
  fi
  udev_teardown
fi

if has wg-quick-unsupported || has wg-quick-healthy; then
  if ! command -v wg-quick >/dev/null; then
    echo "FAIL: wg-quick is not in this guest (run-in-vm.sh --field wg-quick)"
  elif wg_conf; then
    if has wg-quick-unsupported; then
      scenario wg-quick-unsupported
      row wg-quick-unsupported wireguard-tools "wg-quick up wg0 on a kernel without WireGuard"
    fi
    if has wg-quick-healthy; then
      scenario wg-quick-healthy
      row wg-quick-healthy wireguard-tools "wg-quick up wg0, wg show, wg-quick down on a kernel with WireGuard"
    fi
  fi
fi
if has xdp-filter-dispatcher; then
  if section field-setup:xdp-tools xdp_setup; then
    scenario xdp-filter-dispatcher
    row xdp-filter-dispatcher xdp-tools "xdp-filter load --mode native (libxdp's dispatcher, the filter as its freplace component), port N, UDP to N from a peer"
  fi
  xdp_teardown
fi
if has firewalld-blocked || has firewalld-healthy; then
  if section field-setup:firewalld firewalld_setup; then
    if has firewalld-blocked; then
      TOOL="$WORK/pre-firewalld-blocked"; : >"$TOOL"
      firewalld_config icmp-block --add-icmp-block=echo-request
      firewalld_config list-all --list-all
      cp "$TOOL" "$WORK/pre"
      scenario_pre=1 scenario firewalld-blocked --backend netfilter=verdicts
      row firewalld-blocked firewalld "the node's firewalld (nftables backend, default zone public, --add-icmp-block=echo-request); a client asks GET /healthz on the API server port 6443 and pings the node (dptrace --backend netfilter=verdicts)"
    fi
    if has firewalld-healthy; then
      TOOL="$WORK/pre-firewalld-healthy"; : >"$TOOL"
      firewalld_config open-port --add-port=6443/tcp
      firewalld_config icmp-unblock --remove-icmp-block=echo-request
      firewalld_config list-all --list-all
      cp "$TOOL" "$WORK/pre"
      scenario_pre=1 scenario firewalld-healthy --backend netfilter=verdicts
      row firewalld-healthy firewalld "the node's firewalld (nftables backend, default zone public) after firewall-cmd --add-port=6443/tcp, no ICMP block; a client asks GET /healthz on 6443 and pings the node (dptrace --backend netfilter=verdicts)"
    fi
  fi
  firewalld_teardown
fi
echo "DPTRACE-FIELD-DONE"
exit 0
