#!/usr/bin/env bash
# run-in-vm.sh — boot a Debian bookworm 6.1 kernel (or an unpacked kernel
# tree) under QEMU and run a shell script inside it as root.
#
# Usage:
#   vm-images/run-in-vm.sh [options] GUEST_SCRIPT
#
# Options:
#   --kernel-pkg PKG        Debian kernel package to boot, e.g.
#                           linux-image-6.1.0-56-amd64-unsigned.  PKG may hold
#                           '*' wildcards, each matching a run of characters
#                           other than '-': the newest match that apt knows is
#                           used (e.g. 'linux-image-6.1.0-*-cloud-amd64-unsigned').
#                           Default: 'linux-image-6.1.0-*-amd64-unsigned'.
#   --kernel-dir DIR        Boot an already unpacked kernel tree instead of a
#                           package: DIR/boot/vmlinuz-VER and (optionally)
#                           DIR/lib/modules/VER/, as `dpkg -x` of a Debian
#                           kernel package leaves it (see build-kernel.sh).
#   --copy HOST[:GUEST]     Put HOST (file or directory) into the guest at GUEST
#                           (default: /<basename of HOST>).  Repeatable.  ELF
#                           executables also get their ldd libraries copied.
#   --module NAME           Load an extra kernel module (plus its dependencies)
#                           in addition to the default set.  Repeatable.
#   --exclude-module NAME   Leave NAME.ko (and modules that depend on it) out
#                           of the initramfs and do not modprobe it: the guest
#                           behaves like a kernel built without it.  Repeatable.
#   --field COMPONENT       Put a real component of the field suite into the
#                           guest (guests/field.sh drives it).  Repeatable.
#                           udev: systemd-udevd, udevadm and the stock rules and
#                           .link files of Debian's `udev` package (downloaded
#                           with `apt-get download` and unpacked, never
#                           installed on the host); cni: the host's
#                           containernetworking-plugins (bridge, host-local,
#                           loopback); wg-quick: the host's wireguard-tools
#                           wg-quick (wg is always there); firewalld: Debian's
#                           firewalld, python3-firewall and python3-nftables
#                           (downloaded and unpacked like udev) with the
#                           host's /usr shared read-only into the guest
#                           (QEMU -virtfs, tag hostusr) for python3, dbus and
#                           the libraries: guests/field.sh runs it in a chroot
#                           whose /usr is an overlay of the two.  Each
#                           component's package control fields go to
#                           /usr/share/dptrace-field/PACKAGE.control.
#   --timeout SECS          Kill QEMU after SECS seconds (default 600).
#   -h, --help              Show this help.
#
# Environment:
#   DPTRACE_VM_ACCEL=auto|tcg|kvm  Accelerator.  auto (default): KVM if a
#                             quick probe boot shows it works (cached per host
#                             boot), else TCG; KVM is broken on the project's
#                             nested-virt machines (see TOOLCHAIN.md).  kvm
#                             falls back to tcg if QEMU dies before the guest
#                             script starts.
#   DPTRACE_VM_MEM=MiB        Guest memory (default 1024).
#   DPTRACE_VM_SMP=N          Guest CPUs (default 2).
#   DPTRACE_VM_APPEND=ARGS    Extra kernel command line arguments.
#   DPTRACE_VM_KEEP=1         Keep the temporary initramfs build directory.
#
# The guest's serial console is printed to stdout (with \r and terminal
# escape sequences removed).  The guest
# /init prints "DPTRACE-VM-EXIT=<rc>" after GUEST_SCRIPT finishes; this script
# exits with that <rc>.  If the marker never appears it exits 124 when the
# timeout fired, 125 otherwise (kernel panic, QEMU error, ...).
#
# Needs root on the host only to install missing packages with apt-get and to
# create the /dev/console node in the initramfs.

set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="$HERE/cache"
MARKER="DPTRACE-VM-EXIT="

# Modules loaded in every guest: what dptrace's tests need for veth/bridge/
# vxlan topologies and iptables-nft rules (filter + REJECT, conntrack, NAT),
# plus TC hooks.  Dependencies are resolved from modules.dep, so e.g. stp,
# llc, nf_defrag_ipv4 and libcrc32c come along automatically.
DEFAULT_MODULES=(
  veth dummy bridge br_netfilter vxlan wireguard geneve
  sch_ingress cls_bpf
  nfnetlink nf_tables nft_compat nft_ct nft_nat nft_chain_nat nft_masq
  nft_reject nft_reject_inet nft_reject_ipv4 nft_reject_ipv6
  x_tables ip_tables ip6_tables iptable_filter ip6table_filter iptable_nat
  xt_tcpudp xt_conntrack xt_state xt_comment xt_multiport xt_mark
  xt_addrtype xt_MASQUERADE xt_nat xt_LOG xt_limit
  ipt_REJECT ip6t_REJECT nf_reject_ipv4 nf_reject_ipv6
  nf_conntrack nf_nat nf_log_syslog
)

log() { echo "run-in-vm: $*" >&2; }
die() { log "error: $*"; exit 2; }

usage() { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

# ---------------------------------------------------------------- arguments
KERNEL_PKG=""
KERNEL_DIR=""
COPIES=()
EXTRA_MODULES=()
EXCLUDE_MODULES=()
FIELD=()
TIMEOUT=600
GUEST_SCRIPT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --kernel-pkg) KERNEL_PKG="${2:?--kernel-pkg needs a value}"; shift 2 ;;
    --kernel-pkg=*) KERNEL_PKG="${1#*=}"; shift ;;
    --kernel-dir) KERNEL_DIR="${2:?--kernel-dir needs a value}"; shift 2 ;;
    --kernel-dir=*) KERNEL_DIR="${1#*=}"; shift ;;
    --copy) COPIES+=("${2:?--copy needs a value}"); shift 2 ;;
    --copy=*) COPIES+=("${1#*=}"); shift ;;
    --module) EXTRA_MODULES+=("${2:?--module needs a value}"); shift 2 ;;
    --module=*) EXTRA_MODULES+=("${1#*=}"); shift ;;
    --exclude-module) EXCLUDE_MODULES+=("${2:?--exclude-module needs a value}"); shift 2 ;;
    --exclude-module=*) EXCLUDE_MODULES+=("${1#*=}"); shift ;;
    --field) FIELD+=("${2:?--field needs a value}"); shift 2 ;;
    --field=*) FIELD+=("${1#*=}"); shift ;;
    --timeout) TIMEOUT="${2:?--timeout needs a value}"; shift 2 ;;
    --timeout=*) TIMEOUT="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; GUEST_SCRIPT="${1:-}"; shift || true; break ;;
    -*) usage >&2; die "unknown option $1" ;;
    *) GUEST_SCRIPT="$1"; shift; break ;;
  esac
done
[ $# -eq 0 ] || die "unexpected arguments after GUEST_SCRIPT: $*"
[ -n "$GUEST_SCRIPT" ] || { usage >&2; die "missing GUEST_SCRIPT"; }
[ -f "$GUEST_SCRIPT" ] || die "GUEST_SCRIPT $GUEST_SCRIPT is not a file"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds"
for c in "${FIELD[@]}"; do
  case "$c" in
    udev|cni|wg-quick|xdp-tools) ;;
    # The 9p share of the host's /usr, the overlay over it, the nftables expressions
    # firewalld's ruleset uses that the default set lacks (fib: its IPv6 rpfilter).
    firewalld) EXTRA_MODULES+=(virtio_pci 9pnet_virtio 9p overlay nft_fib_inet nft_fib_ipv4 nft_fib_ipv6) ;;
    *) die "--field: unknown component $c (udev, cni, wg-quick, firewalld, xdp-tools)" ;;
  esac
done
[ -z "$KERNEL_DIR" ] || [ -z "$KERNEL_PKG" ] || die "--kernel-dir and --kernel-pkg exclude each other"
[ -z "$KERNEL_DIR" ] || [ -d "$KERNEL_DIR" ] || die "--kernel-dir $KERNEL_DIR is not a directory"

# apt helpers (apt_run, apt_update_once, ensure_pkgs)
. "$HERE/lib.sh"

# qemu-system-x86 provides qemu-system-x86_64; busybox-static is the guest's
# userland (it must be static: it is the only thing in the guest besides the
# few dynamically linked tools whose libraries we copy); iptables gives
# xtables-nft-multi; nftables gives nft (native nftables rules, lab scenario
# apiserver-rejected); iproute2 gives ip; wireguard-tools gives wg (keys and
# peers of lab scenario wireguard-overlay).  cpio is optional (busybox has one).
ensure_pkgs qemu-system-x86 busybox-static iptables nftables iproute2 wireguard-tools bash gzip
BUSYBOX="$(command -v busybox)" || die "busybox not found after installing busybox-static"
# --field cni copies the host's CNI plugins.
# --field firewalld runs python3, dbus-daemon and ping from the host's /usr: they must be there.
for c in "${FIELD[@]}"; do
  case "$c" in
    cni) ensure_pkgs containernetworking-plugins ;;
    xdp-tools) ensure_pkgs xdp-tools ;;
    firewalld) ensure_pkgs python3 python3-gi python3-dbus gir1.2-glib-2.0 dbus-daemon libnftables1 iputils-ping ;;
  esac
done

# --------------------------------------------------- kernel package / cache
mkdir -p "$CACHE/debs" "$CACHE/kernels"
[ -f "$HERE/.gitignore" ] || printf 'cache/\n' >"$HERE/.gitignore"

# Serialize cache updates between concurrent runs.
exec 9>"$CACHE/.lock"
flock 9

# A package name pattern as an anchored regex for `apt-cache search`: '*'
# matches a run of characters other than '-', so that
# linux-image-6.1.0-*-amd64-unsigned does not match the -cloud/-rt flavours.
pkg_regex() { printf '^%s$' "$(sed -e 's/[.+]/\\&/g' -e 's/\*/[^-]*/g' <<<"$1")"; }

# The newest package apt knows matching a pattern (sort -V so that -56 > -9);
# without a match even after `apt-get update`, the newest one already in the
# cache (works offline).
resolve_pkg() {
  local pattern="$1" re found
  re="$(pkg_regex "$pattern")"
  newest() { apt-cache search --names-only "$re" 2>/dev/null | awk '{print $1}' | grep -E "$re" | sort -V | tail -n1; }
  found="$(newest)"
  if [ -z "$found" ]; then apt_update_once || true; found="$(newest)"; fi
  if [ -z "$found" ]; then
    found="$(ls "$CACHE/kernels" | grep -E "$re" | sort -V | tail -n1 || true)"
    [ -n "$found" ] && log "apt knows no $pattern; using the cached $found"
  fi
  [ -n "$found" ] || die "no package matching $pattern known to apt"
  printf '%s\n' "$found"
}

# Download and unpack a kernel package into $CACHE/kernels/PKG (once).
unpack_pkg() {
  local pkg="$1" kdir="$CACHE/kernels/$1" ver deb kver
  [ -f "$kdir/.complete" ] && return 0
  candidate() { apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}'; }
  ver="$(candidate)"
  if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then apt_update_once; ver="$(candidate)"; fi
  [ -n "$ver" ] && [ "$ver" != "(none)" ] || die "apt has no candidate for $pkg"
  deb="$CACHE/debs/${pkg}_${ver//:/%3a}_amd64.deb"
  if [ ! -f "$deb" ]; then
    log "downloading $pkg $ver"
    # Sandbox::User=root: the cache dir is not readable by user _apt.
    (cd "$CACHE/debs" && apt_run apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver")
  fi
  [ -f "$deb" ] || deb="$(ls -t "$CACHE/debs/${pkg}_"*.deb | head -n1)"
  log "unpacking $(basename "$deb")"
  rm -rf "$kdir.tmp" && mkdir -p "$kdir.tmp"
  dpkg -x "$deb" "$kdir.tmp"
  rm -rf "$kdir.tmp/usr/share"   # docs only
  kver="$(ls "$kdir.tmp/lib/modules")"
  prepare_modules "$kdir.tmp" "$kver"
  printf '%s %s %s\n' "$pkg" "$ver" "$kver" >"$kdir.tmp/.complete"
  rm -rf "$kdir" && mv "$kdir.tmp" "$kdir"
}

# Make an unpacked tree's modules loadable by busybox modprobe.
prepare_modules() {
  local kdir="$1" kver="$2"
  [ -d "$kdir/lib/modules/$kver" ] || return 0
  # Debian 6.1 ships plain .ko; newer kernels may ship .ko.xz/.ko.zst, which
  # busybox modprobe cannot load, so decompress them once here.
  find "$kdir/lib/modules" -name '*.ko.xz' -exec xz -d {} +
  find "$kdir/lib/modules" -name '*.ko.zst' -exec zstd -q -d --rm {} +
  # A .deb has no modules.dep (the postinst makes it); generate it.
  if command -v depmod >/dev/null; then depmod -b "$kdir" "$kver"
  else "$BUSYBOX" depmod -b "$kdir" "$kver"; fi
}

if [ -n "$KERNEL_DIR" ]; then
  KDIR="$(cd "$KERNEL_DIR" && pwd)"
  images=("$KDIR"/boot/vmlinuz-*)
  [ -f "${images[0]}" ] || die "--kernel-dir: no boot/vmlinuz-* in $KDIR"
  [ ${#images[@]} -eq 1 ] || die "--kernel-dir: several kernels in $KDIR/boot: ${images[*]##*/}"
  KVER="${images[0]##*/vmlinuz-}"
  if [ -d "$KDIR/lib/modules/$KVER" ] && [ ! -f "$KDIR/lib/modules/$KVER/modules.dep" ]; then
    prepare_modules "$KDIR" "$KVER"
  fi
  KERNEL_DESC="tree $KDIR"
  # build-kernel.sh records "NAME SOURCE-VERSION RELEASE" there.
  [ -f "$KDIR/.complete" ] && KERNEL_DESC="$KERNEL_DESC [$(head -n1 "$KDIR/.complete")]"
else
  case "${KERNEL_PKG:=linux-image-6.1.0-*-amd64-unsigned}" in
    *'*'*) KERNEL_PKG="$(resolve_pkg "$KERNEL_PKG")" ;;
  esac
  unpack_pkg "$KERNEL_PKG"
  KDIR="$CACHE/kernels/$KERNEL_PKG"
  read -r _ KPKG_VERSION KVER <"$KDIR/.complete"
  KERNEL_DESC="$KERNEL_PKG $KPKG_VERSION"
fi
# The field suite's Debian packages (downloaded and unpacked once, under the same lock).
declare -A FIELD_TREE=()
for c in "${FIELD[@]}"; do
  case "$c" in
    udev) FIELD_TREE[udev]="$(field_tree udev udev)" ;;
    firewalld) FIELD_TREE[firewalld]="$(field_tree firewalld firewalld python3-firewall python3-nftables)" ;;
  esac
done
flock -u 9

VMLINUZ="$KDIR/boot/vmlinuz-$KVER"
MODDIR="$KDIR/lib/modules/$KVER"
[ -f "$VMLINUZ" ] || die "no kernel image at $VMLINUZ"
# xtask vm-test reads this line for its report: keep its shape.
log "kernel: $KERNEL_DESC ($KVER)"

# ------------------------------------------------------------- initramfs
WORK="$(mktemp -d /tmp/dptrace-vm.XXXXXX)"
cleanup() { [ "${DPTRACE_VM_KEEP:-0}" = 1 ] && log "kept $WORK" || rm -rf "$WORK"; }
trap cleanup EXIT
ROOT="$WORK/root"

# Merged-/usr layout like the host, so host paths (/lib/x86_64-linux-gnu,
# /lib64/ld-linux-x86-64.so.2, /sbin/ip, ...) can be copied verbatim.
mkdir -p "$ROOT"/{usr/bin,usr/sbin,usr/lib,usr/lib64,dev,proc,sys,run,tmp,root,etc,mnt}
for d in bin sbin lib lib64; do ln -s "usr/$d" "$ROOT/$d"; done
chmod 1777 "$ROOT/tmp"
# The kernel opens /dev/console before running /init; without the node, init
# would have no stdout.  (devtmpfs is mounted later on top of /dev.)
mknod -m 600 "$ROOT/dev/console" c 5 1 2>/dev/null || true

# Copy a host file to the same path in the guest, dereferencing symlinks.
copy_same_path() {
  local f="$1"
  [ -e "$ROOT$f" ] && return 0
  mkdir -p "$ROOT$(dirname "$f")"
  cp -L "$f" "$ROOT$f"
}

# Copy the shared libraries (and the dynamic loader) that ELF files need.
copy_libs() {
  local lib
  # ldd prints "libfoo.so => /path (addr)" and "/lib64/ld-linux... (addr)"
  # (plus a "file:" header per file when given several).
  for lib in $(ldd "$@" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3}
                                          $1 ~ /^\// && $1 !~ /:$/ {print $1}' | sort -u); do
    copy_same_path "$lib"
  done
}

is_dynamic_elf() {
  [ -f "$1" ] && head -c4 "$1" 2>/dev/null | grep -q 'ELF' && ldd "$1" >/dev/null 2>&1
}

# busybox-static + all its applet links (bin/ls, sbin/modprobe, ...).  The
# real bash/ip/iptables below overwrite the busybox links of the same name.
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list-full); do
  [ "$applet" = bin/busybox ] && continue   # would replace itself by a loop
  ln -sf /bin/busybox "$ROOT/$applet"
done

# bash (runs GUEST_SCRIPT), iproute2's ip, iptables-nft, iptables-legacy, nft,
# wg (its libraries, libc and the loader, come through ldd like the others').
for bin in /usr/bin/bash /usr/sbin/ip /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi /usr/sbin/nft \
           /usr/bin/wg; do
  rm -f "$ROOT$bin"
  copy_same_path "$bin"
  copy_libs "$bin"
done
for name in iptables ip6tables iptables-save ip6tables-save iptables-restore \
            ip6tables-restore iptables-nft ip6tables-nft iptables-nft-save \
            ip6tables-nft-save iptables-nft-restore ip6tables-nft-restore; do
  ln -sf xtables-nft-multi "$ROOT/usr/sbin/$name"
done
for name in iptables-legacy ip6tables-legacy iptables-legacy-save ip6tables-legacy-save; do
  ln -sf xtables-legacy-multi "$ROOT/usr/sbin/$name"
done
# iptables dlopen()s its match/target extensions, ldd cannot see those.
XTLIB=/usr/lib/x86_64-linux-gnu/xtables
if [ -d "$XTLIB" ]; then
  mkdir -p "$ROOT$XTLIB"
  cp -a "$XTLIB/." "$ROOT$XTLIB/"
  copy_libs "$XTLIB"/*.so
fi
# Name databases used by iptables (-p tcp), ip (rt tables) and friends.
for f in /etc/protocols /etc/services /etc/ethertypes; do
  [ -f "$f" ] && copy_same_path "$f"
done
[ -d /etc/iproute2 ] && cp -a /etc/iproute2 "$ROOT/etc/"
printf 'root:x:0:0:root:/root:/bin/bash\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\n' >"$ROOT/etc/group"

# Kernel modules.  Resolve the wanted names ('-' and '_' are equivalent) to
# .ko paths plus their dependencies via the full modules.dep and copy only
# those.  busybox modprobe ignores "softdep" (e.g. libcrc32c needs a crc32c
# implementation, without it nf_tables/nf_conntrack fail to load with ENOENT),
# so softdeps are resolved here (through modules.alias) and put in the load
# list before the module that wants them.
declare -A DEP=() ALIAS=() SEEN=() NEED_PATHS=() EXCLUDED=()
for m in "${EXCLUDE_MODULES[@]}"; do EXCLUDED["${m//-/_}"]=1; done
if [ -f "$MODDIR/modules.dep" ]; then
  while IFS=: read -r path deps; do
    b="${path##*/}"; b="${b%.ko}"; DEP["${b//-/_}"]="$path$deps"
  done <"$MODDIR/modules.dep"
else
  log "no modules in this kernel tree: everything it has is built in"
fi
if [ -f "$MODDIR/modules.alias" ]; then
  while read -r _ name mod; do
    case "$name" in *[*?[]*) continue ;; esac   # wildcard aliases are for hardware
    ALIAS["$name"]+=" $mod"
  done <"$MODDIR/modules.alias"
fi
is_builtin() { [ -f "$MODDIR/modules.builtin" ] && grep -qE "/${1//_/[-_]}\.ko\$" "$MODDIR/modules.builtin"; }

LOADABLE=()   # modprobe order for the guest
declare -A SOFTDEP=()   # ko path -> "pre: a b post: c" (memoized: forks are slow)
load_softdep() {        # must not run in a subshell, or the memo is lost
  [ -n "${SOFTDEP[$1]+set}" ] \
    || SOFTDEP["$1"]="$(tr '\0' '\n' <"$MODDIR/$1" | sed -n 's/^softdep=//p')"
}
softdeps() {  # softdeps KO-PATH pre|post -> module names
  local want="$2:" w on=0
  for w in ${SOFTDEP[$1]}; do
    case "$w" in *:) [ "$w" = "$want" ] && on=1 || on=0 ;; *) [ $on = 1 ] && echo "$w" ;; esac
  done
  return 0
}
add_module() {   # add_module NAME [soft]: soft = a softdep, which may be absent
  local n="${1//-/_}" p s b
  [ -n "${SEEN[$n]:-}" ] && return 0
  SEEN["$n"]=1
  if [ -n "${EXCLUDED[$n]:-}" ]; then
    is_builtin "$n" && log "warning: cannot exclude $n: it is built into $KVER" \
      || log "leaving out $n (--exclude-module)"
    return 0
  fi
  # A module that needs an excluded one would fail to load: a kernel built
  # without the excluded one would not have it either.
  for p in ${DEP[$n]:-}; do
    b="${p##*/}"; b="${b%.ko}"; b="${b//-/_}"
    if [ -n "${EXCLUDED[$b]:-}" ]; then log "leaving out $n: it needs the excluded $b"; return 0; fi
  done
  if [ -z "${DEP[$n]:-}" ]; then
    if [ -n "${ALIAS[$1]:-}" ]; then
      for s in ${ALIAS[$1]}; do add_module "$s" "${2:-}"; done
    elif is_builtin "$n"; then
      log "module $1 is built into $KVER"
    elif [ "${2:-}" = soft ]; then
      log "softdep $1 is not a module in $KVER (built in under another name, or absent); skipped"
    else
      log "warning: module $1 not found in $KVER"
      LOADABLE+=("$n")   # let the guest report the failure too
    fi
    return 0
  fi
  for p in ${DEP[$n]}; do
    NEED_PATHS["$p"]=1
    load_softdep "$p"
    for s in $(softdeps "$p" pre); do add_module "$s" soft; done
  done
  LOADABLE+=("$n")
  for p in ${DEP[$n]}; do
    for s in $(softdeps "$p" post); do add_module "$s" soft; done
  done
}
for m in "${DEFAULT_MODULES[@]}" "${EXTRA_MODULES[@]}"; do add_module "$m"; done
GMOD="$ROOT/lib/modules/$KVER"
mkdir -p "$GMOD"
for p in "${!NEED_PATHS[@]}"; do
  mkdir -p "$GMOD/$(dirname "$p")"
  cp "$MODDIR/$p" "$GMOD/$p"
done
cp "$MODDIR"/modules.builtin* "$MODDIR"/modules.order "$GMOD/" 2>/dev/null || true
# Regenerate modules.dep etc. for just the copied subset.
"$BUSYBOX" depmod -b "$ROOT" "$KVER"
printf '%s\n' "${LOADABLE[@]}" >"$ROOT/etc/dptrace-modules"
printf '%s\n' "${!EXCLUDED[@]}" >"$ROOT/etc/dptrace-excluded-modules"

# --copy HOST[:GUEST]
for spec in "${COPIES[@]}"; do
  src="${spec%%:*}"
  if [ "$src" != "$spec" ]; then dst="${spec#*:}"; else dst="/$(basename "$src")"; fi
  [ -e "$src" ] || die "--copy: $src does not exist"
  case "$dst" in /*) ;; *) dst="/$dst" ;; esac
  mkdir -p "$ROOT$(dirname "$dst")"
  cp -aL "$src" "$ROOT$dst"
  # Bring the libraries of any dynamically linked program that was copied.
  while IFS= read -r -d '' f; do
    is_dynamic_elf "$f" && copy_libs "$f"
  done < <(find "$src" -type f -perm -u+x -print0)
done

# --field COMPONENT: the field suite's real components, with their libraries and the
# control fields of the package they come from (guests/field.sh reports its version).
FIELD_INFO="$ROOT/usr/share/dptrace-field"
QEMU_EXTRA=()
field_control_of_installed() {   # the host's installed package's control fields
  mkdir -p "$FIELD_INFO"
  dpkg-query -s "$1" >"$FIELD_INFO/$1.control" || die "--field: Debian package $1 is not installed on the host"
}
field_copy() {   # field_copy HOST-PATH...: same path in the guest, plus ldd libraries
  local f
  for f in "$@"; do
    [ -e "$f" ] || die "--field: $f does not exist"
    rm -f "$ROOT$f"
    copy_same_path "$f"
    is_dynamic_elf "$f" && copy_libs "$f"
  done
  return 0
}
for c in "${FIELD[@]}"; do
  case "$c" in
    udev)
      # The whole package (rules, .link files, helpers) but its hardware database, which
      # only describes devices: systemd-udevd acts on new devices as on a Debian node.
      tree="${FIELD_TREE[udev]}"
      (cd "$tree" && find . -path ./.control -prune -o -path ./usr/lib/udev/hwdb.d -prune \
         -o \( -type f -o -type l \) -print) | while read -r f; do
        mkdir -p "$ROOT/$(dirname "$f")"
        cp -a "$tree/$f" "$ROOT/$f"
      done
      while IFS= read -r -d '' f; do
        is_dynamic_elf "$f" && copy_libs "$f"
      done < <(find "$tree/usr" -type f -perm -u+x -print0)
      mkdir -p "$FIELD_INFO" && cp "$tree/.control/udev" "$FIELD_INFO/udev.control"
      ;;
    cni)
      field_copy /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/loopback
      field_control_of_installed containernetworking-plugins
      ;;
    wg-quick)
      field_copy /usr/bin/wg-quick
      field_control_of_installed wireguard-tools
      ;;
    xdp-tools)
      # xdp-filter carries libxdp; libxdp loads its dispatcher and xdp-filter its programs
      # from the BPF object directory (the libxdp1 and xdp-tools packages).
      field_copy /usr/sbin/xdp-filter /usr/lib/x86_64-linux-gnu/bpf/*.o
      field_control_of_installed xdp-tools
      ;;
    firewalld)
      # The packages' /usr (the overlay's upper lower layer over the host's /usr) and /etc,
      # plus what the host's programs need from /etc: the alternatives (iptables), the users
      # dbus-daemon runs as, the name databases, the loader's cache.
      tree="${FIELD_TREE[firewalld]}"
      dst="$ROOT/usr/lib/dptrace-field/firewalld"
      mkdir -p "$dst/etc"
      cp -a "$tree/usr" "$dst/usr"
      cp -a "$tree/etc/." "$dst/etc/"
      for f in /etc/alternatives /etc/protocols /etc/services /etc/ethertypes /etc/nsswitch.conf \
               /etc/ld.so.cache /etc/ld.so.conf /etc/ld.so.conf.d; do
        if [ -e "$f" ]; then cp -a "$f" "$dst/etc/"; fi
      done
      grep -E '^(root|messagebus):' /etc/passwd >"$dst/etc/passwd"
      grep -E '^(root|messagebus):' /etc/group >"$dst/etc/group"
      mkdir -p "$FIELD_INFO" && cp "$tree/.control/firewalld" "$FIELD_INFO/firewalld.control"
      QEMU_EXTRA+=(-virtfs "local,path=/usr,mount_tag=hostusr,security_model=none,readonly=on,multidevs=remap")
      ;;
  esac
done

cp "$GUEST_SCRIPT" "$ROOT/guest.sh"

# /init runs under busybox sh.  Everything it prints goes to the serial
# console (ttyS0), which QEMU forwards to our stdout.
cat >"$ROOT/init" <<'EOF'
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mkdir -p /sys/fs/bpf /sys/fs/cgroup /dev/pts /dev/shm
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup || echo "init: cgroup2 not mounted"
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /dev/shm
hostname dptrace-vm
ip link set lo up

ok=""; failed=""
for m in $(cat /etc/dptrace-modules); do
  if err=$(modprobe "$m" 2>&1); then ok="$ok $m"; else failed="$failed $m"; echo "init: modprobe $m failed: $err"; fi
done
echo "DPTRACE-MODPROBE-OK:$ok"
echo "DPTRACE-MODPROBE-FAILED:$failed"
echo "DPTRACE-MODULES-EXCLUDED:" $(cat /etc/dptrace-excluded-modules)

echo "DPTRACE-VM-GUEST-START"
cd /root
/bin/bash /guest.sh
rc=$?
echo "DPTRACE-VM-EXIT=$rc"
sync
# A kernel without ACPI (no /sys/firmware/acpi: the small kernels build-kernel.sh
# makes) cannot power off: it would halt and idle until the host timeout.  A
# reboot ends QEMU just as well (-no-reboot).
if [ -d /sys/firmware/acpi ]; then poweroff -f; else reboot -f; fi
# Neither should return; if one does, make the kernel panic (panic=-1 +
# -no-reboot then ends QEMU) instead of idling until the host timeout.
exit 1
EOF
chmod 755 "$ROOT/init" "$ROOT/guest.sh"

INITRD="$WORK/initrd.gz"
if command -v cpio >/dev/null; then CPIO=(cpio --quiet -o -H newc -R 0:0)
else CPIO=("$BUSYBOX" cpio -o -H newc); fi
(cd "$ROOT" && find . -print | LC_ALL=C sort | "${CPIO[@]}") | gzip -1 >"$INITRD"
log "initramfs: $(du -h "$INITRD" | cut -f1), ${#LOADABLE[@]} modules requested, ${#NEED_PATHS[@]} .ko files"

# ------------------------------------------------------------------ QEMU
LOG="$WORK/console.log"

# run_qemu ACCEL-ARGS... : boot once; sets QRC (QEMU/timeout exit status).
run_qemu() {
  local start end
  log "booting ($*, timeout ${TIMEOUT}s)"
  start=$(date +%s.%N)
  set +e
  # -nic none: the guest gets no NIC at all, traffic stays in guest netns.
  # The sed drops \r and the terminal control sequences SeaBIOS emits (reset,
  # clear screen, no-autowrap) so they do not mangle the caller's terminal.
  # stdin from /dev/null: QEMU must not put a terminal into raw mode or read
  # keystrokes.  -k: SIGKILL if QEMU ignores the SIGTERM from timeout.
  timeout -k 10 "$TIMEOUT" qemu-system-x86_64 "$@" \
    -m "${DPTRACE_VM_MEM:-1024}" -smp "${DPTRACE_VM_SMP:-2}" \
    -nographic -no-reboot -nic none \
    -kernel "$VMLINUZ" -initrd "$INITRD" "${QEMU_EXTRA[@]}" \
    -append "console=ttyS0 panic=-1 quiet ${DPTRACE_VM_APPEND:-}" \
    </dev/null 2>&1 | sed -u -e 's/\r//g' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1bc//g' \
    | tee "$LOG"
  QRC=${PIPESTATUS[0]}
  set -e
  end=$(date +%s.%N)
  log "QEMU finished in $(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", b - a}') s (rc $QRC)"
}

# kvm_works: can this machine boot a kernel under KVM?  Boots $VMLINUZ with no
# initramfs under KVM for at most 20 s: if KVM works, the kernel runs until it
# panics for want of a root fs.  Nested KVM on the project machines instead
# aborts at once ("failed to set MSR 0x10a") or hangs.  The answer is cached
# per host boot in $CACHE/.kvm-probe, so a matrix of kernels probes only once.
kvm_works() {
  local boot_id out verdict
  [ -r /dev/kvm ] && [ -w /dev/kvm ] || { log "KVM: /dev/kvm is not usable"; return 1; }
  boot_id="$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo unknown)"
  if [ -f "$CACHE/.kvm-probe" ] && [ "$(head -n1 "$CACHE/.kvm-probe")" = "$boot_id" ]; then
    verdict="$(sed -n 2p "$CACHE/.kvm-probe")"
  else
    out="$(timeout -k 2 20 qemu-system-x86_64 -accel kvm -cpu host -m 256 -nographic -no-reboot \
      -nic none -kernel "$VMLINUZ" -append "console=ttyS0 panic=-1" </dev/null 2>&1 | tr -d '\r')" || true
    if grep -qE 'Kernel panic|VFS: ' <<<"$out"; then verdict=yes
    else verdict="no: $(grep -m1 -iE 'error|fail' <<<"$out" || echo 'no kernel output within 20 s')"; fi
    printf '%s\n%s\n' "$boot_id" "$verdict" >"$CACHE/.kvm-probe"
  fi
  log "KVM probe: $verdict"
  [ "$verdict" = yes ]
}

TCG=(-accel tcg -cpu max)
ACCEL="${DPTRACE_VM_ACCEL:-auto}"
if [ "$ACCEL" = auto ]; then
  if kvm_works; then ACCEL=kvm; else ACCEL=tcg; fi
fi
# xtask vm-test reads this line for its report: keep its shape.
log "accel: $ACCEL"
case "$ACCEL" in
  tcg) run_qemu "${TCG[@]}" ;;
  kvm)
    [ -r /dev/kvm ] && [ -w /dev/kvm ] || die "DPTRACE_VM_ACCEL=kvm but /dev/kvm is not usable"
    run_qemu -accel kvm -cpu host
    # Nested KVM on the project machines aborts at once ("failed to set MSR
    # 0x10a").  If the guest script never started, nothing happened yet, so
    # retrying under TCG is safe.  (A KVM *hang* still runs into the timeout.)
    if [ "$QRC" -ne 124 ] && ! grep -q '^DPTRACE-VM-GUEST-START$' "$LOG"; then
      log "KVM boot failed before the guest script ran; retrying with TCG"
      run_qemu "${TCG[@]}"
    fi ;;
  *) die "DPTRACE_VM_ACCEL must be auto, tcg or kvm" ;;
esac

rc_line="$(grep -a "^$MARKER[0-9]*\$" "$LOG" | tail -n1 || true)"
if [ -n "$rc_line" ]; then
  exit "${rc_line#"$MARKER"}"
elif [ "$QRC" -eq 124 ] || [ "$QRC" -eq 137 ]; then
  log "timeout after ${TIMEOUT}s without exit marker"
  exit 124
else
  log "guest ended without exit marker"
  exit 125
fi
