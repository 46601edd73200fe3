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
