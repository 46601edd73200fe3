#!/usr/bin/env bash
# build-kernel.sh — build a Linux kernel from Debian's linux-source package
# with a dptrace config fragment, and install it like an unpacked Debian
# kernel package, for vm-images/run-in-vm.sh --kernel-dir.
#
# Usage:
#   vm-images/build-kernel.sh [options] NAME
#
#   NAME selects vm-images/kernel-configs/NAME.config; the part before the
#   first '-' picks the source package (6.1-nobtf -> linux-source-6.1).
#
# Options:
#   --print-dir      Print the directory the kernel is (or would be) installed
#                    in and exit; builds nothing, needs no root.
#   --force          Rebuild even if the cached kernel is up to date.
#   --config-only    Stop after generating and checking the .config.
#   --keep-build     Keep the unpacked source and object tree (about 1.5 GB)
#                    after a successful build, for faster rebuilds.
#   --jobs N         Parallel make jobs (default: number of CPUs).
#   -h, --help       Show this help.
#
# The cache lives outside the clone, so that every clone on the machine (and
# every CI run on it) shares it: $DPTRACE_CACHE, default /var/cache/dptrace.
#
# Result (shaped like `dpkg -x linux-image-*.deb` plus modules.dep), in
# CACHE/kernels/NAME-KEY, KEY being the first 16 hex digits of the cache key:
#   boot/vmlinuz-RELEASE, boot/config-RELEASE, boot/System.map-RELEASE
#   lib/modules/RELEASE/{kernel/,modules.dep,modules.builtin,...}
#   .complete        "NAME SOURCE-VERSION RELEASE"
#   .config-hash     the whole cache key
#   .build-info      when/how long/which source
# On success the script prints that directory on stdout (its only stdout
# line; everything else goes to stderr).
#
# The base config is named in the fragment by a "# dptrace-base: TARGETS"
# line (make targets run in order before the fragment is merged, e.g.
# "allnoconfig"; default "x86_64_defconfig kvm_guest.config").
#
# Caching: the key is a sha256 over this script's build recipe version, the
# base targets and the fragment's CONFIG_ lines (comments do not count).  If
# .complete exists and the key matches, the script does nothing (no apt
# calls) and says so.  The downloaded linux-source .deb stays in CACHE/debs/;
# the unpacked source and the object tree (CACHE/src/, CACHE/build/NAME/) are
# deleted after a successful build unless --keep-build.  A failed build keeps
# them, and re-running resumes the build where it stopped.
#
# Build log: CACHE/build/NAME.log.  Needs root to apt-get install missing
# build dependencies (bc bison flex libelf-dev libssl-dev gcc make cpio kmod
# xz-utils perl) and to write /var/cache.

set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${DPTRACE_CACHE:-/var/cache/dptrace}"
CONFIGS="$HERE/kernel-configs"
# Bump when the steps below change in a way that changes the kernel.
RECIPE="v2 BASE merge_config olddefconfig bzImage modules INSTALL_MOD_STRIP=1"
DEFAULT_BASE="x86_64_defconfig kvm_guest.config"

log() { echo "build-kernel: $*" >&2; }
die() { log "error: $*"; exit 2; }
usage() { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

START=$(date +%s)
elapsed() {
  local s=$(( $(date +%s) - START ))
  printf '%dm%02ds' $((s / 60)) $((s % 60))
}

# ---------------------------------------------------------------- arguments
FORCE=0 CONFIG_ONLY=0 KEEP=0 PRINT_DIR=0 JOBS="$(nproc)" NAME=""
while [ $# -gt 0 ]; do
  case "$1" in
    --print-dir) PRINT_DIR=1; shift ;;
    --force) FORCE=1; shift ;;
    --config-only) CONFIG_ONLY=1; shift ;;
    --keep-build) KEEP=1; shift ;;
    --jobs) JOBS="${2:?--jobs needs a value}"; shift 2 ;;
    --jobs=*) JOBS="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) usage >&2; die "unknown option $1" ;;
    *) [ -z "$NAME" ] || die "more than one NAME given"; NAME="$1"; shift ;;
  esac
done
[ -n "$NAME" ] || { usage >&2; die "missing NAME (one of: $(cd "$CONFIGS" && ls *.config 2>/dev/null | sed 's/\.config$//' | tr '\n' ' '))"; }
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || die "--jobs must be a positive number"
FRAGMENT="$CONFIGS/$NAME.config"
[ -f "$FRAGMENT" ] || die "no config fragment $FRAGMENT"
SERIES="${NAME%%-*}"
[[ "$SERIES" =~ ^[0-9]+\.[0-9]+$ ]] || die "NAME must start with the kernel series, e.g. 6.1-nobtf"
SRCPKG="linux-source-$SERIES"

# Effective fragment: CONFIG_ lines and "# CONFIG_X is not set" lines.
effective_fragment() {
  grep -E '^(CONFIG_[A-Za-z0-9_]+=|# CONFIG_[A-Za-z0-9_]+ is not set)' "$FRAGMENT" | sed 's/[[:space:]]*$//'
}
BASE="$(sed -n 's/^# dptrace-base:[[:space:]]*//p' "$FRAGMENT" | head -n1 | xargs)"
BASE="${BASE:-$DEFAULT_BASE}"
HASH="$( { echo "$RECIPE"; echo "base: $BASE"; effective_fragment; } | sha256sum | cut -d' ' -f1)"
CHECK_MODULES="$(sed -n 's/^# dptrace-check-modules:[[:space:]]*//p' "$FRAGMENT" | tr '\n' ' ')"

OUT="$CACHE/kernels/$NAME-${HASH:0:16}"
BUILD="$CACHE/build/$NAME"
BUILDLOG="$CACHE/build/$NAME.log"
if [ $PRINT_DIR -eq 1 ]; then
  echo "$OUT"
  exit 0
fi

# Every module named by the fragment's "dptrace-check-modules:" line must be
# a .ko in modules.dep or listed in modules.builtin.
check_modules() {  # check_modules MODDIR
  local moddir="$1" m n missing=()
  for m in $CHECK_MODULES; do
    n="${m//-/_}"; n="${n//_/[-_]}"
    grep -qE "(^|/)${n}\.ko:" "$moddir/modules.dep" && continue
    grep -qE "(^|/)${n}\.ko\$" "$moddir/modules.builtin" && continue
    missing+=("$m")
  done
  [ ${#missing[@]} -eq 0 ] || die "modules neither built as .ko nor built in: ${missing[*]}"
  [ -z "$CHECK_MODULES" ] || log "all $(wc -w <<<"$CHECK_MODULES") checked modules present (.ko or built in)"
}

# ------------------------------------------------------------- up to date?
# Exits 0 (printing the kernel dir) when the cached kernel matches the key.
exit_if_up_to_date() {
  [ $FORCE -eq 0 ] && [ $CONFIG_ONLY -eq 0 ] && [ -f "$OUT/.complete" ] \
    && [ "$(cat "$OUT/.config-hash" 2>/dev/null)" = "$HASH" ] || return 0
  local srcver release
  read -r _ srcver release <"$OUT/.complete"
  [ -f "$OUT/boot/vmlinuz-$release" ] && [ -f "$OUT/lib/modules/$release/modules.dep" ] \
    || die "$OUT/.complete exists but the tree is incomplete; rerun with --force"
  check_modules "$OUT/lib/modules/$release"
  log "$NAME is up to date ($release from $SRCPKG $srcver, fragment unchanged); nothing to do"
  log "kernel dir: $OUT"
  log "took $(elapsed)"
  echo "$OUT"
  exit 0
}
exit_if_up_to_date

# apt helpers (apt_run, apt_update_once, ensure_pkgs)
. "$HERE/lib.sh"

mkdir -p "$CACHE/debs" "$CACHE/src" "$CACHE/build" "$CACHE/kernels" \
  || die "cannot create $CACHE (run as root, or set DPTRACE_CACHE to a writable directory)"

# One build per NAME at a time (run-in-vm.sh's cache/.lock is not held, so
# VM runs with other kernels go on during a build).  A build that finished
# while we waited is reused.
exec 8>"$CACHE/.build-kernel-$NAME.lock"
flock -n 8 || { log "another build of $NAME is running; waiting"; flock 8; exit_if_up_to_date; }

ensure_pkgs bc bison flex libelf-dev libssl-dev gcc make cpio kmod xz-utils perl

# ------------------------------------------------------------- source tree
# Prefer an installed linux-source-X.Y (its tarball is in /usr/src); else
# apt-get download the .deb into cache/debs/ and take the tarball out of it.
TARBALL_IN_DEB="usr/src/$SRCPKG.tar.xz"
if dpkg-query -W -f='${Status}' "$SRCPKG" 2>/dev/null | grep -q 'install ok installed' \
    && [ -f "/$TARBALL_IN_DEB" ]; then
  SRCVER="$(dpkg-query -W -f='${Version}' "$SRCPKG")"
  TARBALL="/$TARBALL_IN_DEB"
  log "using installed $SRCPKG $SRCVER"
else
  candidate() { apt-cache policy "$SRCPKG" 2>/dev/null | awk '/Candidate:/ {print $2}'; }
  SRCVER="$(candidate)"
  if [ -z "$SRCVER" ] || [ "$SRCVER" = "(none)" ]; then apt_update_once; SRCVER="$(candidate)"; fi
  [ -n "$SRCVER" ] && [ "$SRCVER" != "(none)" ] || die "apt has no candidate for $SRCPKG"
  DEB="$CACHE/debs/${SRCPKG}_${SRCVER//:/%3a}_all.deb"
  if [ ! -f "$DEB" ]; then
    log "downloading $SRCPKG $SRCVER"
    # Sandbox::User=root: the cache dir is not readable by user _apt.
    (cd "$CACHE/debs" && apt_run apt-get download -q -o APT::Sandbox::User=root "$SRCPKG=$SRCVER")
  fi
  [ -f "$DEB" ] || die "download of $SRCPKG $SRCVER did not produce $DEB"
  TARBALL=""
fi
SRC="$CACHE/src/$SRCPKG-$SRCVER"
if [ ! -f "$SRC/.complete" ]; then
  log "unpacking $SRCPKG $SRCVER into $SRC"
  rm -rf "$SRC.tmp" && mkdir -p "$SRC.tmp"
  if [ -z "$TARBALL" ]; then
    dpkg -x "$DEB" "$SRC.tmp/deb"
    TARBALL="$SRC.tmp/deb/$TARBALL_IN_DEB"
    [ -f "$TARBALL" ] || die "$DEB has no $TARBALL_IN_DEB"
  fi
  tar -xJf "$TARBALL" -C "$SRC.tmp"
  [ -f "$SRC.tmp/$SRCPKG/Makefile" ] || die "unexpected tarball layout (no $SRCPKG/Makefile)"
  mv "$SRC.tmp/$SRCPKG" "$SRC.tree" && rm -rf "$SRC.tmp"
  rm -rf "$SRC" && mv "$SRC.tree" "$SRC"
  touch "$SRC/.complete"
fi

# Fixed environment: no LOCALVERSION from the caller, reproducible-ish
# build identity.
KMAKE=(make -C "$SRC" O="$BUILD" LOCALVERSION= KBUILD_BUILD_USER=dptrace KBUILD_BUILD_HOST=vm-images)

# ------------------------------------------------------------------ config
# The object tree belongs to one source tree; switch => start over.
BUILD_KEY="$SRCPKG $SRCVER $HASH"
if [ -d "$BUILD" ] && [ "$(cat "$BUILD/.dptrace-source" 2>/dev/null)" != "$SRCPKG $SRCVER" ]; then
  log "object tree $BUILD is from another source; removing it"
  rm -rf "$BUILD"
fi
mkdir -p "$BUILD"
echo "$SRCPKG $SRCVER" >"$BUILD/.dptrace-source"

verify_config() {  # compare the fragment against the final .config
  local cfg="$BUILD/.config" line sym want got bad=0
  while IFS= read -r line; do
    if [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
      sym="${BASH_REMATCH[1]}"; want=n
    else
      sym="${line%%=*}"; want="${line#*=}"
    fi
    got="$(grep -E "^$sym=" "$cfg" | head -n1 | cut -d= -f2- || true)"
    [ -n "$got" ] || got=n
    case "$want" in
      n) [ "$got" = n ] || { log "CONFIG MISMATCH: $sym is $got, fragment wants it off"; bad=1; } ;;
      m) case "$got" in
           m) ;;
           y) log "note: $sym=y (fragment asks for m; something selects it as built-in)" ;;
           *) log "CONFIG MISMATCH: $sym is $got, fragment wants m"; bad=1 ;;
         esac ;;
      *) [ "$got" = "$want" ] || { log "CONFIG MISMATCH: $sym is $got, fragment wants $want"; bad=1; } ;;
    esac
  done < <(effective_fragment)
  # The non-negotiables, whatever the fragment says.
  for sym in CONFIG_DEBUG_INFO_BTF CONFIG_DEBUG_INFO; do
    if grep -qE "^$sym=" "$cfg"; then log "CONFIG MISMATCH: $sym must be off"; bad=1; fi
  done
  [ $bad -eq 0 ] || die "the final .config does not match $FRAGMENT (see above; $cfg)"
  log "config checked: all $(effective_fragment | wc -l) fragment lines hold; DEBUG_INFO_BTF is not set"
}

if [ "$(cat "$BUILD/.dptrace-config-key" 2>/dev/null)" != "$BUILD_KEY" ] || [ ! -f "$BUILD/.config" ]; then
  log "configuring: $BASE + $(basename "$FRAGMENT")"
  rm -f "$BUILD/.dptrace-config-key" "$BUILD/.config"
  {
    for target in $BASE; do "${KMAKE[@]}" "$target"; done
    # -m: merge only (olddefconfig below); -O: where .config lives.
    (cd "$SRC" && scripts/kconfig/merge_config.sh -m -O "$BUILD" "$BUILD/.config" "$FRAGMENT")
    "${KMAKE[@]}" olddefconfig
    "${KMAKE[@]}" syncconfig   # include/config/auto.conf: kernelrelease needs it
  } >"$BUILD/config.log" 2>&1 || { tail -n 30 "$BUILD/config.log" >&2; die "configuration failed (log: $BUILD/config.log)"; }
  verify_config
  echo "$BUILD_KEY" >"$BUILD/.dptrace-config-key"
else
  log "object tree already configured for this fragment; resuming"
  verify_config
fi
RELEASE="$("${KMAKE[@]}" -s kernelrelease)"
log "kernel release: $RELEASE"
if [ $CONFIG_ONLY -eq 1 ]; then
  log "--config-only: final config is $BUILD/.config"
  log "took $(elapsed)"
  exit 0
fi

# ------------------------------------------------------------------- build
log "building bzImage + modules with $JOBS jobs (log: $BUILDLOG)"
BSTART=$(date +%s)
nice -n 10 "${KMAKE[@]}" -j"$JOBS" bzImage modules >"$BUILDLOG" 2>&1 &
MAKEPID=$!
trap 'kill "$MAKEPID" 2>/dev/null || true' INT TERM
while kill -0 "$MAKEPID" 2>/dev/null; do
  for _ in 1 2 3 4 5 6 7 8 9 10 11 12; do
    sleep 5; kill -0 "$MAKEPID" 2>/dev/null || break
  done
  kill -0 "$MAKEPID" 2>/dev/null \
    && log "  ... $(( ($(date +%s) - BSTART) / 60 )) min, $(grep -c '^  CC' "$BUILDLOG" || true) files compiled, last: $(tail -n1 "$BUILDLOG" | cut -c1-70)"
done
set +e; wait "$MAKEPID"; MRC=$?; set -e
trap - INT TERM
if [ $MRC -ne 0 ]; then
  grep -E 'error|Error' "$BUILDLOG" | head -n 20 >&2 || true
  tail -n 20 "$BUILDLOG" >&2
  die "make failed (rc $MRC); full log: $BUILDLOG; rerun to resume"
fi
BUILD_SECS=$(( $(date +%s) - BSTART ))
log "compiled in $((BUILD_SECS / 60))m$(printf %02d $((BUILD_SECS % 60)))s"

# ----------------------------------------------------------------- install
STAGE="$OUT.tmp"
rm -rf "$STAGE" && mkdir -p "$STAGE/boot"
log "installing into $OUT"
"${KMAKE[@]}" INSTALL_MOD_PATH="$STAGE" INSTALL_MOD_STRIP=1 DEPMOD=/sbin/depmod modules_install \
  >>"$BUILDLOG" 2>&1 || { tail -n 20 "$BUILDLOG" >&2; die "modules_install failed"; }
cp "$BUILD/arch/x86/boot/bzImage" "$STAGE/boot/vmlinuz-$RELEASE"
cp "$BUILD/.config" "$STAGE/boot/config-$RELEASE"
cp "$BUILD/System.map" "$STAGE/boot/System.map-$RELEASE"
MODDIR="$STAGE/lib/modules/$RELEASE"
# build/source point into cache/build and cache/src, which are deleted below.
rm -f "$MODDIR/build" "$MODDIR/source"
# modules.dep may be empty: a kernel with everything built in lists its
# modules in modules.builtin only.
[ -f "$MODDIR/modules.dep" ] || die "modules_install made no modules.dep in $MODDIR"
check_modules "$MODDIR"
printf '%s %s %s\n' "$NAME" "$SRCVER" "$RELEASE" >"$STAGE/.complete"
echo "$HASH" >"$STAGE/.config-hash"
{
  echo "name=$NAME"
  echo "source=$SRCPKG $SRCVER"
  echo "release=$RELEASE"
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "compile_seconds=$BUILD_SECS"
  echo "jobs=$JOBS"
  echo "gcc=$(gcc -dumpfullversion)"
  echo "base=$BASE"
  echo "fragment_sha256=$(sha256sum <"$FRAGMENT" | cut -d' ' -f1)"
} >"$STAGE/.build-info"
rm -rf "$OUT" && mv "$STAGE" "$OUT"

if [ $KEEP -eq 0 ]; then
  log "removing object tree and unpacked source (--keep-build keeps them)"
  rm -rf "$BUILD" "$SRC"
fi
log "done: $NAME = $RELEASE ($(du -sh "$OUT" | cut -f1) in $OUT, $(find "$OUT/lib/modules" -name '*.ko' | wc -l) modules)"
log "boot it with: vm-images/run-in-vm.sh --kernel-dir $OUT GUEST_SCRIPT"
log "took $(elapsed)"
echo "$OUT"
