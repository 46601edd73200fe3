# Shared by run-in-vm.sh and build-kernel.sh (sourced; the caller defines log and die).
#
# apt helpers: a background `apt-get install` may hold the dpkg/apt locks. apt's own
# DPkg::Lock::Timeout only covers the dpkg frontend lock, so additionally retry on any
# "Could not get lock" error for up to ~15 minutes.
apt_run() {
  local out rc tries=0
  while :; do
    set +e
    out="$("$@" -o DPkg::Lock::Timeout=600 2>&1)"; rc=$?
    set -e
    if [ $rc -ne 0 ] && grep -qiE 'could not get lock|unable to lock|unable to acquire' <<<"$out" \
        && [ $tries -lt 180 ]; then
      [ $tries -eq 0 ] && log "waiting for the apt/dpkg lock (another apt is running)..."
      tries=$((tries + 1)); sleep 5; continue
    fi
    [ $rc -eq 0 ] || printf '%s\n' "$out" >&2
    return $rc
  done
}

APT_UPDATED=0
apt_update_once() {
  [ $APT_UPDATED -eq 1 ] && return 0
  log "running apt-get update"
  apt_run apt-get update -q
  APT_UPDATED=1
}

# Install Debian packages that are not installed yet (root only; otherwise say what is missing).
ensure_pkgs() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing host packages (${missing[*]}); install them or run as root"
  log "installing host packages: ${missing[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt_run apt-get install -y -q --no-install-recommends "${missing[@]}"; then
    apt_update_once
    DEBIAN_FRONTEND=noninteractive apt_run apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
}

# field_tree NAME PKG...: Debian packages for the field suite's guests, never installed on the
# host: apt's candidate version of each PKG is fetched with `apt-get download` (no state of the
# host's apt or dpkg changes) into $DPTRACE_CACHE/debs (default /var/cache/dptrace, outside the
# clone, like the kernel cache), and all of them are unpacked (`dpkg-deb -x`) into one tree,
# $DPTRACE_CACHE/field/NAME-KEY (KEY: the .deb file names), once. The tree has merged /usr
# (bin, sbin, lib and lib64 moved under usr/, as in run-in-vm.sh's initramfs), no
# documentation, and each package's control fields in .control/PKG; Python modules are
# byte-compiled with the host's python3 (the guests run the host's python3, and compiling
# firewalld's modules at every start costs minutes under TCG). Prints the tree.
field_tree() {
  local name="$1" cache="${DPTRACE_CACHE:-/var/cache/dptrace}" pkg ver deb key tree tmp d
  shift
  local debs=()
  mkdir -p "$cache/debs" "$cache/field"
  for pkg in "$@"; do
    candidate() { apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}'; }
    ver="$(candidate)"
    if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then apt_update_once; ver="$(candidate)"; fi
    deb=""
    if [ -n "$ver" ] && [ "$ver" != "(none)" ]; then
      deb="$(ls "$cache/debs/${pkg}_${ver//:/%3a}_"*.deb 2>/dev/null | head -n1 || true)"
      if [ -z "$deb" ]; then
        log "downloading $pkg $ver (not installed: unpacked for the guests only)"
        # Sandbox::User=root: the cache dir is not readable by user _apt.
        if ! (cd "$cache/debs" && apt_run apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver"); then
          apt_update_once
          (cd "$cache/debs" && apt_run apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver")
        fi
        deb="$(ls "$cache/debs/${pkg}_${ver//:/%3a}_"*.deb 2>/dev/null | head -n1 || true)"
      fi
    fi
    # Offline: the newest .deb of PKG already in the cache.
    [ -n "$deb" ] || deb="$(ls "$cache/debs/${pkg}_"*.deb 2>/dev/null | sort -V | tail -n1 || true)"
    [ -n "$deb" ] || die "cannot get the Debian package $pkg (apt has no candidate, the cache no .deb)"
    debs+=("$deb")
  done
  # The recipe is part of the key: bump it when the unpacking below changes.
  key="$(printf '%s\n' field-tree-2 "${debs[@]##*/}" | sha256sum | cut -c1-16)"
  tree="$cache/field/$name-$key"
  if [ ! -f "$tree/.complete" ]; then
    tmp="$tree.tmp.$$"
    rm -rf "$tmp" && mkdir -p "$tmp/.control"
    for deb in "${debs[@]}"; do
      dpkg-deb -x "$deb" "$tmp"
      dpkg-deb -f "$deb" >"$tmp/.control/$(dpkg-deb -f "$deb" Package)"
    done
    for d in bin sbin lib lib64; do
      if [ -d "$tmp/$d" ] && [ ! -L "$tmp/$d" ]; then
        mkdir -p "$tmp/usr/$d" && cp -a "$tmp/$d/." "$tmp/usr/$d/" && rm -rf "${tmp:?}/$d"
      fi
    done
    rm -rf "$tmp/usr/share/doc" "$tmp/usr/share/man" "$tmp/usr/share/locale" "$tmp/usr/share/lintian"
    # unchecked-hash: valid whatever the files' times become in the initramfs.
    if [ -d "$tmp/usr/lib/python3/dist-packages" ] && command -v python3 >/dev/null; then
      python3 -m compileall -q -d /usr/lib/python3/dist-packages --invalidation-mode unchecked-hash \
        "$tmp/usr/lib/python3/dist-packages" >/dev/null
    fi
    printf '%s\n' "${debs[@]##*/}" >"$tmp/.complete"
    rm -rf "$tree" && mv "$tmp" "$tree"
  fi
  printf '%s\n' "$tree"
}
