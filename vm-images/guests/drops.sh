#!/bin/bash
# Guest script: the same dptrace binary as on the host, on another kernel.
#   vm-images/run-in-vm.sh --copy target/release/dptrace:/usr/bin/dptrace vm-images/guests/drops.sh
# Checks that dptrace mounts tracefs itself, resolves this kernel's kfree_skb layout, and
# reports a NO_SOCKET drop (IPv4 and IPv6) and both lab scenarios.
set -u
fail=0
echo "kernel: $(uname -r)"
# dptrace must mount tracefs on its own (debugfs would expose it too). The mount stays:
# another tracer may be attaching through it.
umount /sys/kernel/tracing 2>/dev/null
umount /sys/kernel/debug 2>/dev/null
grep -q tracefs /proc/mounts && { echo "FAIL: could not unmount tracefs for the test"; fail=1; }
dptrace check | tee /tmp/check.txt || fail=1
grep -q "mounted by dptrace" /tmp/check.txt && grep -q "/sys/kernel/tracing tracefs" /proc/mounts \
  && echo "OK: dptrace mounted tracefs itself" || { echo "FAIL: dptrace did not mount tracefs"; fail=1; }

ip netns add vc && ip netns add vs
ip -n vc link add c0 type veth peer name s0 netns vs
for ns in vc vs; do ip -n $ns link set lo up; done
ip -n vc addr add 10.77.0.1/24 dev c0; ip -n vs addr add 10.77.0.2/24 dev s0
ip -n vc addr add fd00:77::1/64 dev c0 nodad; ip -n vs addr add fd00:77::2/64 dev s0 nodad
ip -n vc link set c0 up; ip -n vs link set s0 up
sleep 2
dptrace trace --json --netns vs -- ip netns exec vc bash -c 'echo a > /dev/udp/10.77.0.2/9999; echo b > /dev/udp/fd00:77::2/9999' > /tmp/trace.json
for dst in 10.77.0.2 fd00:77::2; do
  if grep '"type":"event"' /tmp/trace.json | grep '"reason":"NO_SOCKET"' | grep "\"dst\":\"$dst\"" | grep '"dport":9999' | grep -q '"device":"s0"'; then
    echo "OK: NO_SOCKET drop to $dst:9999 on s0"
  else
    echo "FAIL: no NO_SOCKET drop to $dst"; fail=1
  fi
done
echo "--- trace output"; cat /tmp/trace.json
dptrace lab run --all || fail=1
echo "guest result: fail=$fail"
exit $fail
