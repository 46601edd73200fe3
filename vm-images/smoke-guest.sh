#!/bin/bash
# Guest-side smoke test for run-in-vm.sh:
#   vm-images/run-in-vm.sh vm-images/smoke-guest.sh
# Prints the kernel version, two tracepoint format files between
# "=== BEGIN/END <event> ===" markers (with a sha256 so a host-side copy can
# be checked byte for byte), BTF presence, a veth pair between two netns with
# an iptables-nft REJECT rule, and the kallsyms line count.
set -u
echo "uname -r: $(uname -r)"
for ev in skb/kfree_skb net/netif_receive_skb; do
  f=/sys/kernel/tracing/events/$ev/format
  echo "=== BEGIN $ev ==="
  cat "$f"
  echo "=== END $ev ==="
  echo "SHA256 $ev $(sha256sum <"$f" | cut -d' ' -f1) $(wc -c <"$f")"
done
ls -l /sys/kernel/btf/vmlinux

set -e
ip netns add a
ip netns add b
ip link add va type veth peer name vb
ip link set va netns a
ip link set vb netns b
ip -n a addr add 10.99.0.1/24 dev va
ip -n b addr add 10.99.0.2/24 dev vb
for ns in a b; do ip -n $ns link set lo up; done
ip -n a link set va up
ip -n b link set vb up
ip netns exec a iptables -A INPUT -p icmp --icmp-type echo-request -j REJECT
ip netns exec a iptables -A INPUT -p tcp --dport 80 -j DROP
ip netns exec a ip6tables -A INPUT -p udp --dport 53 -j REJECT
if ip netns exec b ping -c1 -W2 10.99.0.1; then
  echo "FAIL: ping got through the REJECT rule"; exit 1
fi
ip netns exec a iptables -L INPUT -v -n
echo "kallsyms lines: $(grep -c . /proc/kallsyms)"
