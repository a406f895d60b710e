# Shared by scripts/brokers.sh and scripts/containers.sh (sourced, not run):
# running as root and installing Debian packages. The sourcing script
# defines log and die first.

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo -n "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

APT_UPDATED=
apt_install() {
    command -v apt-get >/dev/null || die "apt-get not found; install $* yourself"
    if [[ -z $APT_UPDATED ]]; then
        log "apt-get update"
        as_root apt-get update -qq >&2
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    # Keep the packages' maintainer scripts from starting system-wide
    # services (brokers would bind the ports we want on all interfaces;
    # dockerd/containerd would serve the default socket to everyone).
    local policy=/usr/sbin/policy-rc.d added=
    if [[ ! -e $policy ]]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        added=1
    fi
    local rc=0
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 || rc=$?
    [[ -n $added ]] && as_root rm -f "$policy"
    ((rc == 0)) || die "apt-get install $* failed"
}
