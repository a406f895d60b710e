#!/usr/bin/env bash
# A Docker engine and locally built broker images for the testcontainers path
# of the test suite (tests/containers/mod.rs), without any image registry:
# the base image comes from debootstrap, the brokers from Debian packages, PyPI
# and the tansu binary that scripts/brokers.sh builds.
#
# Usage:
#   scripts/containers.sh start [rabbitmq|kafka|sqs|redis|postgres|all]...  (default: all)
#   scripts/containers.sh stop
#   scripts/containers.sh env
#
#   eval "$(scripts/containers.sh start rabbitmq sqs)"
#
# `start` installs Debian's docker.io if dockerd is missing, starts a private
# dockerd if no engine answers, builds the images that are missing or whose
# inputs changed, and prints only `export NAME='value'` lines on stdout:
# DOCKER_HOST and MQ_TEST_<BACKEND>_IMAGE for each image (logs go to stderr).
# `stop` stops what `start` started (dockerd with the containers it still
# runs, the API proxy) and is a no-op otherwise; built images stay cached.
#
# The private dockerd listens on its own socket ($RUN/docker.sock), not on
# /var/run/docker.sock, so `docker info` elsewhere on the machine does not
# start answering (scripts/test.sh and other tools decide by it); its
# published container ports bind 127.0.0.1 only (--ip). Containers run on
# Docker's bridge network; only image builds use the host network.
#
# testcontainers 0.27 sends every request as API 1.52 and does not negotiate;
# engines older than Docker 29 refuse that. For such an engine (Debian 12's
# docker.io is 20.10, API 1.41) DOCKER_HOST points at
# scripts/docker_api_proxy.py, which rewrites the version in request paths.
#
# Images (tag mq-test/<name>:local, label org.mq.inputs = sha256 of the
# Dockerfile, its files and the base image; rebuilt only when that changes):
#   mq-test/debian:bookworm   debootstrap --variant=minbase bookworm, imported
#                             (tarball cached in $DIR/base-<hash>.tar.gz)
#   mq-test/rabbitmq:local    Debian rabbitmq-server, AMQP 5672
#   mq-test/kafka:local       tansu (in-memory storage), Kafka 9092
#   mq-test/sqs:local         moto[server] via scripts/moto_server.py, 4566
#   mq-test/redis:local       Debian redis-server, 6379
#   mq-test/postgres:local    Debian postgresql, 5432 (mq-outbox's tests)
# The Dockerfiles are in scripts/containers/.
#
# Environment:
#   MQ_CONTAINERS_DIR     cache: base tarball, dockerd data root, logs
#                         (default $HOME/.cache/mq-containers)
#   MQ_CONTAINERS_RUN     sockets and pid files (default /run/mq-containers)
#   MQ_CONTAINERS_MIRROR  Debian mirror (default http://deb.debian.org/debian)
#   MQ_CONTAINERS_MOTO    pip requirement for moto (default 'moto[server]>=5,<6')
#   MQ_BROKERS_DIR        where scripts/brokers.sh keeps tansu (for the kafka image)
set -euo pipefail

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
SCRIPTS="$(dirname "$SELF")"

: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
DIR="${MQ_CONTAINERS_DIR:-$HOME/.cache/mq-containers}"
RUN="${MQ_CONTAINERS_RUN:-/run/mq-containers}"
MIRROR="${MQ_CONTAINERS_MIRROR:-http://deb.debian.org/debian}"
MOTO_SPEC="${MQ_CONTAINERS_MOTO:-moto[server]>=5,<6}"
SUITE=bookworm
LOGS="$DIR/log"
ENGINE_SOCK="$RUN/docker.sock"
PROXY_SOCK="$RUN/api.sock"
# The API version testcontainers speaks (bollard 0.20's default).
CLIENT_API=1.52

ALL=(rabbitmq kafka sqs redis postgres)

export DEBIAN_FRONTEND=noninteractive DOCKER_BUILDKIT=0 DOCKER_CLI_HINTS=false

log() { printf '[containers] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
now_ms() { date +%s%3N; }
since() { local ms=$(($(now_ms) - $1)); printf '%d.%ds' $((ms / 1000)) $((ms % 1000 / 100)); }
emit() { printf "export %s='%s'\n" "$1" "${2//\'/\'\\\'\'}"; }

# shellcheck source=install.sh
source "$(dirname "${BASH_SOURCE[0]}")/install.sh"

# ------------------------------------------------------------------ engine

running() { kill -0 "$1" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]; }

# The pid in pid file $1 if alive with $2 in its command line.
live_pid() {
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] && running "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2" || return 1
    echo "$pid"
}

answers() { DOCKER_HOST="$1" timeout 20 docker version --format '{{.Server.APIVersion}}' 2>/dev/null; }

stop_pid() {
    local name=$1 file=$2 pattern=$3 pid i
    if pid=$(live_pid "$file" "$pattern"); then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 300; i++)); do
            running "$pid" || break
            sleep 0.1
        done
        if running "$pid"; then
            log "$name did not exit after 30s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$file"
}

ensure_docker() {
    command -v dockerd >/dev/null && command -v docker >/dev/null && return
    apt_install docker.io
    command -v dockerd >/dev/null || die "docker.io installed but dockerd not found"
}

# Sets ENGINE (a DOCKER_HOST value) to a running engine: ours if it runs, an
# engine the caller already has (DOCKER_HOST or the default socket), else a
# private dockerd started now.
start_engine() {
    if live_pid "$RUN/dockerd.pid" dockerd >/dev/null && answers "unix://$ENGINE_SOCK" >/dev/null; then
        ENGINE="unix://$ENGINE_SOCK"
        log "dockerd already running (pid $(<"$RUN/dockerd.pid")), reusing it"
        return
    fi
    if command -v docker >/dev/null && answers "${DOCKER_HOST:-unix:///var/run/docker.sock}" >/dev/null; then
        ENGINE="${DOCKER_HOST:-unix:///var/run/docker.sock}"
        log "using the Docker engine at $ENGINE (not started by this script; stop leaves it alone)"
        return
    fi
    ensure_docker
    mkdir -p "$RUN" "$LOGS" "$DIR/docker"
    local driver pid start i
    for driver in overlay2 vfs; do
        start=$(now_ms)
        log "starting dockerd (socket $ENGINE_SOCK, storage $driver, data $DIR/docker, log $LOGS/dockerd.log)"
        rm -f "$ENGINE_SOCK"
        setsid dockerd \
            --host "unix://$ENGINE_SOCK" \
            --data-root "$DIR/docker" \
            --exec-root "$RUN/exec" \
            --pidfile "$RUN/dockerd.pid" \
            --storage-driver "$driver" \
            --ip 127.0.0.1 \
            </dev/null >>"$LOGS/dockerd.log" 2>&1 9>&- &
        pid=$!
        for ((i = 0; i < 240; i++)); do
            if answers "unix://$ENGINE_SOCK" >/dev/null; then
                echo "$pid" >"$RUN/dockerd.pid"
                ENGINE="unix://$ENGINE_SOCK"
                log "dockerd answers (storage $driver, ready in $(since "$start"))"
                return
            fi
            running "$pid" || break
            sleep 0.25
        done
        log "dockerd did not start with storage $driver; last lines of $LOGS/dockerd.log:"
        tail -n 15 "$LOGS/dockerd.log" >&2 || true
        kill -TERM "$pid" 2>/dev/null || true
        sleep 1
    done
    die "dockerd did not start"
}

version_lt() { [[ $1 != "$2" && $(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1) == "$1" ]]; }

# Sets CLIENT_HOST: the engine itself when it speaks API $CLIENT_API, else
# the version-rewriting proxy in front of it.
start_proxy() {
    local api
    api=$(answers "$ENGINE") || die "the Docker engine at $ENGINE stopped answering"
    if ! version_lt "$api" "$CLIENT_API"; then
        CLIENT_HOST=$ENGINE
        return
    fi
    [[ $ENGINE == unix://* ]] || die "engine API $api < $CLIENT_API (testcontainers needs Docker 29+) and it is not on a Unix socket this script can proxy"
    CLIENT_HOST="unix://$PROXY_SOCK"
    if live_pid "$RUN/proxy.pid" docker_api_proxy >/dev/null && answers "$CLIENT_HOST" >/dev/null; then
        return
    fi
    mkdir -p "$RUN" "$LOGS"
    log "engine API $api is older than testcontainers' $CLIENT_API: starting scripts/docker_api_proxy.py on $PROXY_SOCK"
    stop_pid proxy "$RUN/proxy.pid" docker_api_proxy
    setsid python3 "$SCRIPTS/docker_api_proxy.py" "$PROXY_SOCK" "${ENGINE#unix://}" \
        </dev/null >>"$LOGS/proxy.log" 2>&1 9>&- &
    echo $! >"$RUN/proxy.pid"
    local i
    for ((i = 0; i < 40; i++)); do
        answers "$CLIENT_HOST" >/dev/null && return
        sleep 0.25
    done
    tail -n 15 "$LOGS/proxy.log" >&2 || true
    die "docker_api_proxy.py did not answer"
}

# ------------------------------------------------------------------ images

dk() { DOCKER_HOST="$ENGINE" docker "$@"; }

label_of() { dk image inspect --format '{{index .Config.Labels "org.mq.inputs"}}' "$1" 2>/dev/null || true; }

hash_files() { (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-32; }

BASE_IMAGE=mq-test/debian:$SUITE

# Bump when the recipe below changes.
BASE_RECIPE="1 $SUITE minbase $MIRROR docs-excluded policy-rc.d"

build_base() {
    local hash tarball root start
    hash=$(printf '%s' "$BASE_RECIPE" | sha256sum | cut -c1-32)
    if [[ $(label_of "$BASE_IMAGE") == "$hash" ]]; then
        return
    fi
    tarball="$DIR/base-$SUITE-$hash.tar.gz"
    if [[ ! -s $tarball ]]; then
        command -v debootstrap >/dev/null || apt_install debootstrap
        start=$(now_ms)
        root=$(mktemp -d "$DIR/rootfs.XXXXXX")
        log "debootstrap --variant=minbase $SUITE ($MIRROR; log $LOGS/debootstrap.log)"
        if ! as_root debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$LOGS/debootstrap.log" 2>&1; then
            tail -n 20 "$LOGS/debootstrap.log" >&2
            as_root rm -rf "$root"
            die "debootstrap failed"
        fi
        # Like Debian's own container images: no services started by package
        # scripts, no docs, no recommends, apt lists not kept.
        printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
        chmod 755 "$root/usr/sbin/policy-rc.d"
        printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\npath-exclude /usr/share/locale/*\npath-include /usr/share/locale/locale.alias\n' \
            >"$root/etc/dpkg/dpkg.cfg.d/01-container-slim"
        printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$root/etc/apt/apt.conf.d/01-container"
        printf 'deb %s %s main\ndeb %s %s-updates main\n' "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" >"$root/etc/apt/sources.list"
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
        tar -C "$root" -czf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
        as_root rm -rf "$root"
        log "base rootfs cached in $tarball ($(du -h "$tarball" | cut -f1), $(since "$start"))"
    fi
    log "docker import $tarball as $BASE_IMAGE"
    dk import --change "LABEL org.mq.inputs=$hash" --change 'CMD ["/bin/bash"]' "$tarball" "$BASE_IMAGE" >/dev/null
    # Older cached tarballs are not needed any more.
    find "$DIR" -maxdepth 1 -name "base-$SUITE-*.tar.gz" ! -name "base-$SUITE-$hash.tar.gz" -delete
}

tansu_bin() {
    local state="${MQ_BROKERS_DIR:-$HOME/.cache/mq-brokers}"
    if [[ -x $state/tansu/bin/tansu ]]; then
        echo "$state/tansu/bin/tansu"
    elif command -v tansu >/dev/null; then
        command -v tansu
    else
        return 1
    fi
}

# Copies what image $1 needs next to its Dockerfile in context dir $2.
context_files() {
    local name=$1 ctx=$2 bin
    case $name in
    rabbitmq) cp "$SCRIPTS/containers/rabbitmq.conf" "$ctx/" ;;
    kafka)
        if ! bin=$(tansu_bin); then
            log "tansu is not built yet: building it with scripts/brokers.sh (about 10 minutes, once)"
            "$SCRIPTS/brokers.sh" start kafka-memory >/dev/null
            "$SCRIPTS/brokers.sh" stop kafka >/dev/null
            bin=$(tansu_bin) || die "no tansu binary after scripts/brokers.sh"
        fi
        cp "$bin" "$ctx/tansu"
        ;;
    sqs)
        cp "$SCRIPTS/moto_server.py" "$ctx/"
        cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-bundle.crt" 2>/dev/null || : >"$ctx/ca-bundle.crt"
        printf '%s\n' "$MOTO_SPEC" >"$ctx/.moto-spec"
        ;;
    redis | postgres) ;;
    esac
}

build_image() {
    local name=$1 image="mq-test/$1:local" ctx hash base_id start
    ctx=$(mktemp -d "${TMPDIR:-/tmp}/mq-image-$name.XXXXXX")
    cp "$SCRIPTS/containers/$name.Dockerfile" "$ctx/Dockerfile"
    context_files "$name" "$ctx"
    base_id=$(dk image inspect --format '{{.Id}}' "$BASE_IMAGE")
    echo "$base_id" >"$ctx/.base"
    hash=$(hash_files "$ctx")
    if [[ $(label_of "$image") == "$hash" ]]; then
        log "$image is up to date"
        rm -rf "$ctx"
        return
    fi
    start=$(now_ms)
    log "building $image (log $LOGS/build-$name.log)"
    local args=(--build-arg "BASE=$BASE_IMAGE")
    [[ $name == sqs ]] && args+=(--build-arg "MOTO_SPEC=$MOTO_SPEC")
    if ! dk build --network host --label "org.mq.inputs=$hash" "${args[@]}" \
        -t "$image" "$ctx" >"$LOGS/build-$name.log" 2>&1; then
        tail -n 30 "$LOGS/build-$name.log" >&2
        rm -rf "$ctx"
        die "docker build $image failed"
    fi
    rm -rf "$ctx"
    log "built $image in $(since "$start") ($(dk image inspect --format '{{.Size}}' "$image" | awk '{printf "%d MB", $1/1e6}'))"
    # The image that tag had before is garbage now.
    dk image prune -f --filter "label=org.mq.inputs" >/dev/null 2>&1 || true
}

# ------------------------------------------------------------------ commands

images() {
    local b out=()
    (($# == 0)) && set -- all
    for b in "$@"; do
        case $b in
        all) out+=("${ALL[@]}") ;;
        rabbit | rabbitmq) out+=(rabbitmq) ;;
        kafka | tansu) out+=(kafka) ;;
        sqs | moto) out+=(sqs) ;;
        redis) out+=(redis) ;;
        postgres | postgresql | pg) out+=(postgres) ;;
        *) die "unknown image '$b' (known: ${ALL[*]} all)" ;;
        esac
    done
    printf '%s\n' "${out[@]}" | awk '!seen[$0]++'
}

var_of() {
    case $1 in
    rabbitmq) echo MQ_TEST_RABBIT_IMAGE ;;
    kafka) echo MQ_TEST_KAFKA_IMAGE ;;
    sqs) echo MQ_TEST_SQS_IMAGE ;;
    redis) echo MQ_TEST_REDIS_IMAGE ;;
    postgres) echo MQ_TEST_POSTGRES_IMAGE ;;
    esac
}

lock() {
    mkdir -p "$RUN" "$LOGS"
    exec 9>"$RUN/lock"
    flock -w 1200 9 || die "another containers.sh holds $RUN/lock"
}

cmd_start() {
    local list name start
    list=$(images "$@")
    start=$(now_ms)
    lock
    start_engine
    start_proxy
    build_base
    for name in $list; do build_image "$name"; done
    log "ready in $(since "$start"): DOCKER_HOST=$CLIENT_HOST, images: $(for n in $list; do printf 'mq-test/%s:local ' "$n"; done)"
    emit DOCKER_HOST "$CLIENT_HOST"
    for name in $list; do emit "$(var_of "$name")" "mq-test/$name:local"; done
}

cmd_stop() {
    lock
    stop_pid docker_api_proxy "$RUN/proxy.pid" docker_api_proxy
    rm -f "$PROXY_SOCK"
    # dockerd stops its containers (and its containerd) on SIGTERM.
    stop_pid dockerd "$RUN/dockerd.pid" dockerd
    log "stopped"
}

cmd_env() {
    local name
    if live_pid "$RUN/proxy.pid" docker_api_proxy >/dev/null; then
        emit DOCKER_HOST "unix://$PROXY_SOCK"
    elif live_pid "$RUN/dockerd.pid" dockerd >/dev/null; then
        emit DOCKER_HOST "unix://$ENGINE_SOCK"
    else
        return 0
    fi
    ENGINE="unix://$ENGINE_SOCK"
    live_pid "$RUN/dockerd.pid" dockerd >/dev/null || ENGINE="${DOCKER_HOST:-unix:///var/run/docker.sock}"
    for name in "${ALL[@]}"; do
        [[ -n $(label_of "mq-test/$name:local") ]] && emit "$(var_of "$name")" "mq-test/$name:local"
    done
    return 0
}

main() {
    local cmd=${1:-}
    (($#)) && shift
    case $cmd in
    start | build) cmd_start "$@" ;;
    stop) cmd_stop ;;
    env) cmd_env ;;
    *)
        sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//' >&2
        [[ $cmd == -h || $cmd == --help || $cmd == help ]] || exit 2
        ;;
    esac
}

main "$@"
