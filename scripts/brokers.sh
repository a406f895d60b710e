#!/usr/bin/env bash
# Real brokers for the test suite, run natively (no Docker, no systemd) and
# bound to 127.0.0.1 only: RabbitMQ, Kafka (tansu), SQS (moto), Redis and
# PostgreSQL (for mq-outbox).
#
# Usage:
#   scripts/brokers.sh start   [rabbit|kafka|sqs|redis|postgres|all]...   (default: all)
#   scripts/brokers.sh stop    [rabbit|kafka|sqs|redis|postgres|all]...   (default: all)
#   scripts/brokers.sh restart rabbit|kafka|kafka-durable|sqs|redis|postgres
#   scripts/brokers.sh env
#   scripts/brokers.sh rabbitmqctl <args>...   (rabbitmqctl against our node)
#
#   eval "$(scripts/brokers.sh start)"     # exports MQ_TEST_*_URL / _RESTART
#
# `start` installs what is missing, starts each broker (or reuses one that is
# already running and answering), waits until it answers and prints only
# `export NAME='value'` lines on stdout; everything else goes to stderr.
# `restart` stops and starts one broker with the same port and data, and
# returns once it answers again (it is the MQ_TEST_<BACKEND>_RESTART command).
# `stop` stops only what this script started (pid files) and is a no-op when
# nothing runs. See scripts/README.md.
#
# Environment:
#   MQ_BROKERS_DIR           state: run/ (pid files), log/, data/, binaries
#                            (default $HOME/.cache/mq-brokers)
#   MQ_BROKERS_WAIT          seconds to wait for a broker to answer (default 120)
#   MQ_BROKERS_RABBIT_PORT   5672   (distribution port: MQ_BROKERS_RABBIT_DIST_PORT, 25672)
#   MQ_BROKERS_KAFKA_PORT    9092   (in-memory tansu, for the suites)
#   MQ_BROKERS_KAFKA_DURABLE_PORT 9094 (sqlite tansu, for the restart scenario;
#                            `kafka` starts and stops both)
#   MQ_BROKERS_SQS_PORT      4566
#   MQ_BROKERS_REDIS_PORT    6379
#   MQ_BROKERS_POSTGRES_PORT 5432
#   MQ_BROKERS_POSTGRES_DIR  PostgreSQL's data directory (default
#                            $MQ_BROKERS_DIR/data/postgres, or
#                            /var/tmp/mq-brokers-postgres when we run as root
#                            and the `postgres` account cannot reach the
#                            state dir, e.g. under a 0700 /root)
#   ERL_EPMD_PORT            4369   (epmd for the RabbitMQ node)
#   MQ_TANSU_VERSION         tansu version built when no binary is cached (0.6.0)
#   MQ_TANSU_STORAGE         storage engines tried in order
#                            (default "memory://tansu/": tansu 0.6's sqlite://
#                            engine panics under the conformance load, see
#                            mq-kafka/README.md; "sqlite://tansu.db" persists)
#   MQ_TANSU_DURABLE_STORAGE storage of the durable tansu (sqlite://tansu.db)
set -euo pipefail

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
HOST=127.0.0.1

: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
STATE="${MQ_BROKERS_DIR:-$HOME/.cache/mq-brokers}"
RUN="$STATE/run"
LOGS="$STATE/log"
DATA="$STATE/data"

WAIT="${MQ_BROKERS_WAIT:-120}"
RABBIT_PORT="${MQ_BROKERS_RABBIT_PORT:-5672}"
RABBIT_DIST_PORT="${MQ_BROKERS_RABBIT_DIST_PORT:-25672}"
RABBIT_NODE=rabbit@localhost
EPMD_PORT="${ERL_EPMD_PORT:-4369}"
KAFKA_PORT="${MQ_BROKERS_KAFKA_PORT:-9092}"
KAFKA_DURABLE_PORT="${MQ_BROKERS_KAFKA_DURABLE_PORT:-9094}"
SQS_PORT="${MQ_BROKERS_SQS_PORT:-4566}"
REDIS_PORT="${MQ_BROKERS_REDIS_PORT:-6379}"
POSTGRES_PORT="${MQ_BROKERS_POSTGRES_PORT:-5432}"
TANSU_VERSION="${MQ_TANSU_VERSION:-0.6.0}"
TANSU_STORAGE="${MQ_TANSU_STORAGE:-memory://tansu/}"
TANSU_DURABLE_STORAGE="${MQ_TANSU_DURABLE_STORAGE:-sqlite://tansu.db}"

ALL=(rabbit kafka kafka_durable sqs redis postgres)

export DEBIAN_FRONTEND=noninteractive PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '[brokers] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

now_ms() { date +%s%3N; }

# `export NAME='value'` with the value single-quoted for eval.
emit() { printf "export %s='%s'\n" "$1" "${2//\'/\'\\\'\'}"; }

# ---------------------------------------------------------------- processes

pidfile() { echo "$RUN/$1.pid"; }

# Alive and not a zombie (an exited daemon stays a zombie until PID 1 reaps
# it, which can take a while or never happen in some containers).
running() {
    kill -0 "$1" 2>/dev/null || return 1
    [[ ! -r /proc/$1/stat ]] && return 0
    local stat
    stat=$(<"/proc/$1/stat") || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# The pid in pid file $1 if that process is alive and its command line
# contains $2 (guards against a recycled pid); fails otherwise.
live_pid() {
    local file=$1 pattern=$2 pid
    [[ -s $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    running "$pid" || return 1
    [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$pattern" || return 1
    echo "$pid"
}

# spawn LOGFILE CMD...: run CMD detached (own session, stdio to LOGFILE, not
# holding our lock fd) and print its pid.
spawn() {
    local logfile=$1
    shift
    setsid "$@" </dev/null >>"$logfile" 2>&1 9>&- &
    echo $!
}

# stop_pid NAME PIDFILE PATTERN: SIGTERM, wait, then SIGKILL.
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
            sleep 0.5
        fi
    fi
    rm -f "$file"
}

# ------------------------------------------------------------------- probes

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null; }

# AMQP 0-9-1: send the protocol header, expect a method frame (type 1).
probe_rabbit() {
    timeout 3 bash -c "exec 3<>/dev/tcp/$HOST/$RABBIT_PORT && printf 'AMQP\\x00\\x00\\x09\\x01' >&3 && head -c 1 <&3 | od -An -tx1" 2>/dev/null |
        grep -q 01
}

# A Kafka Metadata request through the tansu CLI (TCP only without it) to
# port $1 (default: the main Kafka port).
probe_kafka() {
    local bin port=${1:-$KAFKA_PORT}
    port_open "$port" || return 1 # the CLI keeps retrying a closed port
    if bin=$(tansu_bin 2>/dev/null); then
        timeout 10 "$bin" topic list --broker "tcp://$HOST:$port" >/dev/null 2>&1
    else
        port_open "$port"
    fi
}
probe_kafka_durable() { probe_kafka "$KAFKA_DURABLE_PORT"; }

# SQS ListQueues over plain HTTP.
probe_sqs() {
    timeout 5 bash -c "exec 3<>/dev/tcp/$HOST/$SQS_PORT && printf 'GET /?Action=ListQueues HTTP/1.0\\r\\nHost: $HOST:$SQS_PORT\\r\\n\\r\\n' >&3 && head -n 1 <&3" 2>/dev/null |
        grep -q ' 200'
}

probe_redis() {
    timeout 3 bash -c "exec 3<>/dev/tcp/$HOST/$REDIS_PORT && printf 'PING\\r\\n' >&3 && head -c 5 <&3" 2>/dev/null |
        grep -q PONG
}

# wait_ready NAME LOGFILE ALIVE PROBE...: poll PROBE until it succeeds; fail
# early once the command ALIVE fails (the process died), fail after $WAIT
# seconds; on failure show the tail of LOGFILE.
wait_ready() {
    local name=$1 logfile=$2 alive=$3
    shift 3
    local start deadline
    start=$(now_ms)
    deadline=$((start + WAIT * 1000))
    while ! "$@"; do
        if ! $alive; then
            log "$name exited during start-up; last lines of $logfile:"
            tail -n 40 "$logfile" >&2 || true
            return 1
        fi
        if (($(now_ms) > deadline)); then
            log "$name did not answer within ${WAIT}s; last lines of $logfile:"
            tail -n 40 "$logfile" >&2 || true
            return 1
        fi
        sleep 0.25
    done
    local ms=$(($(now_ms) - start))
    log "$name answers on $HOST (ready in $((ms / 1000)).$(printf '%03d' $((ms % 1000)))s)"
}

# --------------------------------------------------------------- installing

# shellcheck source=install.sh
source "$(dirname "$SELF")/install.sh"

rabbit_sbin() {
    local d
    for d in /usr/lib/rabbitmq/bin /usr/lib/rabbitmq/sbin; do
        [[ -x $d/rabbitmq-server ]] && {
            echo "$d"
            return
        }
    done
    return 1
}

ensure_rabbit() {
    rabbit_sbin >/dev/null && return
    apt_install rabbitmq-server
    rabbit_sbin >/dev/null || die "rabbitmq-server installed but /usr/lib/rabbitmq/bin/rabbitmq-server not found"
}

tansu_bin() {
    if [[ -x $STATE/tansu/bin/tansu ]]; then
        echo "$STATE/tansu/bin/tansu"
    elif command -v tansu >/dev/null; then
        command -v tansu
    else
        return 1
    fi
}

ensure_kafka() {
    tansu_bin >/dev/null && return
    command -v cargo >/dev/null || die "tansu is not installed and cargo is missing (install Rust via rustup)"
    command -v cc >/dev/null || apt_install build-essential pkg-config
    log "building tansu $TANSU_VERSION with cargo install (about 10 minutes; log: $LOGS/tansu-build.log)"
    local start
    start=$(now_ms)
    if ! cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql \
        --root "$STATE/tansu" >"$LOGS/tansu-build.log" 2>&1 9>&-; then
        tail -n 40 "$LOGS/tansu-build.log" >&2
        die "cargo install tansu failed"
    fi
    log "tansu built in $((($(now_ms) - start) / 1000))s"
}

# The Python that has moto[server] (our virtualenv, else the system's).
moto_python() {
    local py
    for py in "$STATE/moto/bin/python" python3; do
        if command -v "$py" >/dev/null && "$py" -c 'import moto.server, flask' 2>/dev/null; then
            command -v "$py"
            return
        fi
    done
    return 1
}

ensure_sqs() {
    moto_python >/dev/null && return
    # A private virtualenv: Debian's system Python refuses `pip install`
    # (PEP 668), and this keeps moto's dependencies out of everything else.
    if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        apt_install python3 python3-venv
    fi
    log "installing moto[server] into $STATE/moto"
    python3 -m venv "$STATE/moto" >&2
    "$STATE/moto/bin/pip" install -q 'moto[server]>=5,<6' >&2 9>&- || die "pip install moto[server] failed"
}

ensure_redis() {
    command -v redis-server >/dev/null && return
    apt_install redis-server
}

# The newest installed PostgreSQL's bin directory (Debian keeps each major
# version in /usr/lib/postgresql/<N>/bin, off the PATH).
postgres_bin() {
    local d found=
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x $d/postgres && -x $d/initdb ]] && found=$d
    done
    [[ -n $found ]] && echo "$found"
}

ensure_postgres() {
    postgres_bin >/dev/null && return
    apt_install postgresql
    postgres_bin >/dev/null || die "postgresql installed but no /usr/lib/postgresql/*/bin/postgres"
}

# ------------------------------------------------------------------ brokers
#
# Each broker has: start_X (start or reuse, wait until it answers), stop_X,
# ours_X (our process is alive), probe_X, env_X (export lines).

# A broker already answering on its port that we did not start is reused;
# stop/restart leave it alone.
reuse_foreign() {
    local name=$1 port=$2
    shift 2
    port_open "$port" || return 1
    if "$@"; then
        log "$name: something not started by this script already answers on $HOST:$port; reusing it (stop/restart will not touch it)"
        return 0
    fi
    die "$name: port $HOST:$port is in use by something that does not answer like $name (see: ss -ltnp)"
}

# RabbitMQ -----------------------------------------------------------------

RABBIT_DIR="$DATA/rabbitmq"

rabbit_env() {
    # Everything under the state dir; no system config, no plugins (so no
    # management listener), AMQP and Erlang distribution on loopback only.
    export HOME="$RABBIT_DIR" # Erlang cookie lives here
    export RABBITMQ_NODENAME="$RABBIT_NODE"
    export RABBITMQ_NODE_IP_ADDRESS="$HOST"
    export RABBITMQ_NODE_PORT="$RABBIT_PORT"
    export RABBITMQ_DIST_PORT="$RABBIT_DIST_PORT"
    export ERL_EPMD_ADDRESS="$HOST"
    export ERL_EPMD_PORT="$EPMD_PORT"
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export RABBITMQ_CONF_ENV_FILE="$RABBIT_DIR/rabbitmq-env.conf"
    export RABBITMQ_CONFIG_FILE="$RABBIT_DIR/rabbitmq.conf"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$RABBIT_DIR/advanced.config"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$RABBIT_DIR/enabled_plugins"
    export RABBITMQ_MNESIA_BASE="$RABBIT_DIR/mnesia"
    export RABBITMQ_LOG_BASE="$LOGS/rabbitmq"
    export RABBITMQ_PID_FILE="$RUN/rabbit.pid"
}

# rabbitmqctl against our node (our environment and Erlang cookie); bounded
# by $CTL_TIMEOUT seconds when set.
rabbitmqctl() (
    rabbit_env
    if [[ -n ${CTL_TIMEOUT:-} ]]; then
        timeout "$CTL_TIMEOUT" "$(rabbit_sbin)/rabbitmqctl" -n "$RABBIT_NODE" "$@" 9>&-
    else
        exec "$(rabbit_sbin)/rabbitmqctl" -n "$RABBIT_NODE" "$@" 9>&-
    fi
)

ours_rabbit() { live_pid "$(pidfile rabbit)" beam >/dev/null; }

start_epmd() {
    if live_pid "$(pidfile epmd)" epmd >/dev/null; then return; fi
    if port_open "$EPMD_PORT"; then
        log "epmd already runs on port $EPMD_PORT (not started by this script); using it"
        local hex
        hex=$(printf '%04X' "$EPMD_PORT")
        if cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
            awk -v p=":$hex" '$4 == "0A" && ($2 == "00000000" p || $2 == "00000000000000000000000000000000" p)' | grep -q .; then
            log "warning: that epmd listens on all interfaces, not just loopback (Debian's /usr/sbin/rabbitmqctl starts one like that); 'epmd -kill' stops it once no node uses it"
        fi
        return
    fi
    local pid
    pid=$(spawn "$LOGS/epmd.log" epmd -address "$HOST" -port "$EPMD_PORT")
    echo "$pid" >"$(pidfile epmd)"
    wait_ready epmd "$LOGS/epmd.log" "running $pid" port_open "$EPMD_PORT" 2>/dev/null ||
        die "epmd did not start (log: $LOGS/epmd.log)"
}

start_rabbit() {
    if ours_rabbit && probe_rabbit; then
        log "rabbit already running (pid $(<"$(pidfile rabbit)")), reusing it"
        return
    fi
    if ! ours_rabbit && reuse_foreign rabbit "$RABBIT_PORT" probe_rabbit; then return; fi
    ensure_rabbit
    mkdir -p "$RABBIT_DIR/mnesia" "$LOGS/rabbitmq"
    : >"$RABBIT_DIR/rabbitmq-env.conf"
    echo '[].' >"$RABBIT_DIR/enabled_plugins"
    echo '[].' >"$RABBIT_DIR/advanced.config"
    cat >"$RABBIT_DIR/rabbitmq.conf" <<EOF
# Written by scripts/brokers.sh. guest/guest may only connect from loopback.
loopback_users.guest = true
log.console = false
log.file.level = info
disk_free_limit.absolute = 50MB
EOF
    start_epmd
    local alive=rabbit_alive nodelog="$LOGS/rabbitmq/$RABBIT_NODE.log" from=0
    if ! ours_rabbit; then
        log "starting rabbit ($RABBIT_NODE on $HOST:$RABBIT_PORT, data $RABBIT_DIR)"
        rm -f "$(pidfile rabbit)"
        [[ -f $nodelog ]] && from=$(stat -c %s "$nodelog")
        # In the foreground under setsid rather than -detached, so that boot
        # errors reach rabbit.log and an early exit is noticed.
        local pid
        pid=$(
            rabbit_env
            cd "$RABBIT_DIR"
            spawn "$LOGS/rabbit.log" "$(rabbit_sbin)/rabbitmq-server"
        )
        alive="running $pid"
    fi
    if ! wait_ready rabbit "$LOGS/rabbit.log" "$alive" rabbit_ready; then
        if [[ -f $nodelog ]]; then
            log "last lines of $nodelog:"
            tail -c +$((from + 1)) "$nodelog" | tail -n 30 >&2
        fi
        stop_rabbit
        [[ -n ${pid:-} ]] && running "$pid" && kill -TERM "$pid" 2>/dev/null
        die "rabbit did not start"
    fi
}

# The node writes its pid file early in boot; until then assume it is alive.
rabbit_alive() { [[ ! -s $(pidfile rabbit) ]] || ours_rabbit; }

rabbit_ready() {
    ours_rabbit || return 1
    CTL_TIMEOUT=30 rabbitmqctl await_startup --timeout 5 >/dev/null 2>&1 || return 1
    probe_rabbit
}

stop_rabbit() {
    if ours_rabbit; then
        local pid
        pid=$(<"$(pidfile rabbit)")
        log "stopping rabbit (pid $pid)"
        # `stop <pidfile>` returns once the VM has exited.
        CTL_TIMEOUT=60 rabbitmqctl stop "$(pidfile rabbit)" >/dev/null 2>&1 ||
            log "rabbitmqctl stop failed; terminating the VM"
    fi
    stop_pid rabbit "$(pidfile rabbit)" beam
}

stop_epmd() { stop_pid epmd "$(pidfile epmd)" epmd; }

env_rabbit() {
    emit MQ_TEST_RABBIT_URL "amqp://guest:guest@$HOST:$RABBIT_PORT/%2f"
    ours_rabbit && emit MQ_TEST_RABBIT_RESTART "$(restart_cmd rabbit)"
    return 0
}

# Kafka (tansu) --------------------------------------------------------------

# Two tansu brokers: `kafka` (in-memory storage, fast, for the suites) and
# `kafka_durable` (sqlite storage, for the restart scenario: it keeps topics,
# their ids and acknowledged records across a restart; its engine panics
# under the full conformance load, see mq-kafka/README.md).

ours_kafka() { live_pid "$(pidfile kafka)" tansu >/dev/null; }
ours_kafka_durable() { live_pid "$(pidfile kafka_durable)" tansu >/dev/null; }

# start_tansu NAME PORT ENGINES: start tansu NAME on PORT with the first
# storage engine of ENGINES that works (data in $DATA/NAME).
start_tansu() {
    local name=$1 port=$2 engines=$3 dir="$DATA/$1" bin engine pid
    if "ours_$name" && probe_kafka "$port"; then
        log "$name already running (pid $(<"$(pidfile "$name")")), reusing it"
        return
    fi
    if ! "ours_$name" && reuse_foreign "$name" "$port" "probe_$name"; then return; fi
    ensure_kafka
    mkdir -p "$dir"
    bin=$(tansu_bin)
    # Reuse the engine that worked last time so restarts keep the data.
    if [[ -s $RUN/$name.engine && " $engines " == *" $(<"$RUN/$name.engine") "* ]]; then
        engines=$(<"$RUN/$name.engine")
    fi
    if "ours_$name"; then stop_pid "$name" "$(pidfile "$name")" tansu; fi
    for engine in $engines; do
        log "starting $name (tansu on $HOST:$port, storage $engine, data $dir)"
        # tansu resolves sqlite://NAME relative to its working directory.
        pid=$(cd "$dir" && spawn "$LOGS/$name.log" "$bin" broker \
            --listener-url "tcp://$HOST:$port" \
            --advertised-listener-url "tcp://$HOST:$port" \
            --storage-engine "$engine")
        echo "$pid" >"$(pidfile "$name")"
        if wait_ready "$name" "$LOGS/$name.log" "running $pid" probe_kafka "$port"; then
            echo "$engine" >"$RUN/$name.engine"
            return
        fi
        stop_pid "$name" "$(pidfile "$name")" tansu
        log "$name: storage engine $engine did not work, trying the next one"
    done
    die "$name (tansu) did not start with any of: $engines"
}

start_kafka() { start_tansu kafka "$KAFKA_PORT" "$TANSU_STORAGE"; }
start_kafka_durable() { start_tansu kafka_durable "$KAFKA_DURABLE_PORT" "$TANSU_DURABLE_STORAGE"; }
stop_kafka() { stop_pid kafka "$(pidfile kafka)" tansu; }
stop_kafka_durable() { stop_pid kafka_durable "$(pidfile kafka_durable)" tansu; }
ensure_kafka_durable() { ensure_kafka; }

# tansu creates no topics on its own, and its group joins are slow with
# librdkafka's default timeouts: the tests need both options.
KAFKA_TEST_OPTIONS="${MQ_TEST_KAFKA_OPTIONS:-auto_create_topics=true&partitions=4&session_timeout=6s&heartbeat=500ms&send_timeout=30s&rdkafka.batch.num.messages=1}"

env_kafka() {
    emit MQ_TEST_KAFKA_URL "kafka://$HOST:$KAFKA_PORT?$KAFKA_TEST_OPTIONS&persistent=false"
    return 0
}

# The restart scenario runs against the durable broker (MQ_TEST_KAFKA_RESTART_URL).
env_kafka_durable() {
    emit MQ_TEST_KAFKA_RESTART_URL "kafka://$HOST:$KAFKA_DURABLE_PORT?$KAFKA_TEST_OPTIONS"
    ours_kafka_durable && emit MQ_TEST_KAFKA_RESTART "$(restart_cmd kafka-durable)"
    return 0
}

# SQS (moto) -----------------------------------------------------------------

ours_sqs() { live_pid "$(pidfile sqs)" moto >/dev/null; }

start_sqs() {
    if ours_sqs && probe_sqs; then
        log "sqs already running (pid $(<"$(pidfile sqs)")), reusing it"
        return
    fi
    if ! ours_sqs && reuse_foreign sqs "$SQS_PORT" probe_sqs; then return; fi
    ensure_sqs
    if ours_sqs; then stop_pid sqs "$(pidfile sqs)" moto; fi
    log "starting sqs (moto_server on $HOST:$SQS_PORT; state is in memory only)"
    local pid
    # Through scripts/moto_server.py: moto with a faster clock (see there).
    pid=$(spawn "$LOGS/sqs.log" "$(moto_python)" "$(dirname "$SELF")/moto_server.py" -H "$HOST" -p "$SQS_PORT")
    echo "$pid" >"$(pidfile sqs)"
    wait_ready sqs "$LOGS/sqs.log" "running $pid" probe_sqs || die "sqs (moto_server) did not start"
    # Through a pyenv shim the pid is that of the exec'd Python; make sure.
    ours_sqs || die "sqs: pid $pid is not moto_server"
}

stop_sqs() { stop_pid sqs "$(pidfile sqs)" moto; }

env_sqs() {
    emit MQ_TEST_SQS_URL "sqs+http://test:test@$HOST:$SQS_PORT?region=us-east-1"
    emit MQ_TEST_SQS_ENDPOINT "http://$HOST:$SQS_PORT"
    ours_sqs && emit MQ_TEST_SQS_RESTART "$(restart_cmd sqs)"
    return 0
}

# Redis ----------------------------------------------------------------------

REDIS_DIR="$DATA/redis"

ours_redis() { live_pid "$(pidfile redis)" redis-server >/dev/null; }

start_redis() {
    if ours_redis && probe_redis; then
        log "redis already running (pid $(<"$(pidfile redis)")), reusing it"
        return
    fi
    if ! ours_redis && reuse_foreign redis "$REDIS_PORT" probe_redis; then return; fi
    ensure_redis
    mkdir -p "$REDIS_DIR"
    if ours_redis; then stop_pid redis "$(pidfile redis)" redis-server; fi
    log "starting redis ($HOST:$REDIS_PORT, data $REDIS_DIR)"
    # Foreground under setsid rather than --daemonize, so the pid is known at
    # once and an early exit is noticed.
    local pid
    pid=$(spawn "$LOGS/redis.log" redis-server --bind "$HOST" --port "$REDIS_PORT" \
        --protected-mode yes --daemonize no --dir "$REDIS_DIR" --logfile "" \
        --save "60 1" --appendonly no)
    echo "$pid" >"$(pidfile redis)"
    wait_ready redis "$LOGS/redis.log" "running $pid" probe_redis || die "redis did not start"
}

stop_redis() { stop_pid redis "$(pidfile redis)" redis-server; }

env_redis() {
    emit MQ_TEST_REDIS_URL "redis://$HOST:$REDIS_PORT"
    ours_redis && emit MQ_TEST_REDIS_RESTART "$(restart_cmd redis)"
    return 0
}

# PostgreSQL -----------------------------------------------------------------

# PostgreSQL refuses to run as root: as root, initdb and postgres run as the
# `postgres` account (created by the Debian package) through runuser.
postgres_as() {
    if [[ $(id -u) -eq 0 ]]; then
        echo runuser -u postgres --
    fi
}

# The data directory: under the state dir unless the postgres account
# cannot reach it (root's 0700 home), then /var/tmp/mq-brokers-postgres.
postgres_dir() {
    if [[ -n ${MQ_BROKERS_POSTGRES_DIR:-} ]]; then
        echo "$MQ_BROKERS_POSTGRES_DIR"
    elif [[ $(id -u) -ne 0 ]] || runuser -u postgres -- test -x "$DATA" 2>/dev/null; then
        echo "$DATA/postgres"
    else
        echo /var/tmp/mq-brokers-postgres
    fi
}

# The postmaster's pid is the first line of postmaster.pid.
ours_postgres() { live_pid "$(pidfile postgres)" postgres >/dev/null; }

probe_postgres() {
    local bin
    if bin=$(postgres_bin 2>/dev/null) && [[ -x $bin/pg_isready ]]; then
        timeout 5 "$bin/pg_isready" -q -h "$HOST" -p "$POSTGRES_PORT" -U postgres -d postgres
    else
        port_open "$POSTGRES_PORT"
    fi
}

start_postgres() {
    if ours_postgres && probe_postgres; then
        log "postgres already running (pid $(<"$(pidfile postgres)")), reusing it"
        return
    fi
    if ! ours_postgres && reuse_foreign postgres "$POSTGRES_PORT" probe_postgres; then return; fi
    ensure_postgres
    local bin dir as pid
    bin=$(postgres_bin)
    dir=$(postgres_dir)
    read -r -a as <<<"$(postgres_as)"
    if [[ ! -s $dir/PG_VERSION ]]; then
        mkdir -p "$dir"
        [[ $(id -u) -eq 0 ]] && chown postgres:postgres "$dir"
        chmod 700 "$dir"
        log "initdb $dir (superuser postgres, trust authentication on loopback)"
        "${as[@]}" "$bin/initdb" -D "$dir" -U postgres -A trust -E UTF8 --no-sync \
            >>"$LOGS/postgres.log" 2>&1 9>&- || die "initdb failed (log: $LOGS/postgres.log)"
    fi
    rm -f "$dir/postmaster.pid" # a stale one from a killed server blocks the start
    log "starting postgres ($HOST:$POSTGRES_PORT, data $dir; fsync off: test data only)"
    # TCP on loopback only, no Unix socket; durability traded for speed
    # (a test database: the broker of the outbox tests, never user data).
    pid=$(spawn "$LOGS/postgres.log" "${as[@]}" "$bin/postgres" -D "$dir" \
        -h "$HOST" -p "$POSTGRES_PORT" -k "" \
        -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
        -c max_connections=200 -c log_min_messages=warning)
    wait_ready postgres "$LOGS/postgres.log" "running $pid" probe_postgres || die "postgres did not start"
    # runuser may sit between us and the postmaster: record the real pid.
    head -n 1 "$dir/postmaster.pid" >"$(pidfile postgres)"
    ours_postgres || die "postgres: no live postmaster pid in $dir/postmaster.pid"
}

stop_postgres() {
    local pid i
    # SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for clients).
    if pid=$(live_pid "$(pidfile postgres)" postgres); then
        log "stopping postgres (pid $pid)"
        kill -INT "$pid" 2>/dev/null || true
        for ((i = 0; i < 300; i++)); do
            running "$pid" || break
            sleep 0.1
        done
    fi
    stop_pid postgres "$(pidfile postgres)" postgres
}

env_postgres() {
    emit MQ_TEST_POSTGRES_URL "postgres://postgres@$HOST:$POSTGRES_PORT/postgres"
    ours_postgres && emit MQ_TEST_POSTGRES_RESTART "$(restart_cmd postgres)"
    return 0
}

# ----------------------------------------------------------------- commands

# The restart command (a shell command line) carries the settings that were
# overridden, so it restarts the same broker from an environment without them.
restart_cmd() {
    local v cmd=
    for v in MQ_BROKERS_DIR MQ_BROKERS_WAIT MQ_BROKERS_RABBIT_PORT MQ_BROKERS_RABBIT_DIST_PORT \
        ERL_EPMD_PORT MQ_BROKERS_KAFKA_PORT MQ_BROKERS_KAFKA_DURABLE_PORT MQ_TANSU_DURABLE_STORAGE MQ_BROKERS_SQS_PORT MQ_BROKERS_REDIS_PORT \
        MQ_BROKERS_POSTGRES_PORT MQ_BROKERS_POSTGRES_DIR; do
        [[ -n ${!v:-} ]] && cmd+=" $v=$(printf %q "${!v}")"
    done
    [[ -n $cmd ]] && cmd="env$cmd "
    echo "$cmd$(printf %q "$SELF") restart $1"
}

# Expand the broker arguments ("all" or none means every broker).
brokers() {
    local b out=()
    (($# == 0)) && set -- all
    for b in "$@"; do
        case $b in
        all) out+=("${ALL[@]}") ;;
        rabbit | rabbitmq) out+=(rabbit) ;;
        kafka | tansu) out+=(kafka kafka_durable) ;;
        kafka-memory) out+=(kafka) ;;
        kafka-durable | kafka_durable) out+=(kafka_durable) ;;
        sqs | moto) out+=(sqs) ;;
        redis) out+=(redis) ;;
        postgres | postgresql | pg) out+=(postgres) ;;
        *) die "unknown broker '$b' (known: ${ALL[*]} all)" ;;
        esac
    done
    printf '%s\n' "${out[@]}" | awk '!seen[$0]++'
}

lock() {
    mkdir -p "$RUN" "$LOGS" "$DATA"
    if command -v flock >/dev/null; then
        exec 9>"$RUN/lock"
        flock -w 600 9 || die "another brokers.sh holds $RUN/lock"
    fi
}

docker_note() {
    if command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; then
        log "note: a Docker engine is available; the test suite can start brokers with testcontainers instead (leave MQ_TEST_*_URL unset). Starting natively anyway."
    fi
}

cmd_start() {
    local list b
    list=$(brokers "$@")
    lock
    docker_note
    for b in $list; do "start_$b"; done
    for b in $list; do "env_$b"; done
}

cmd_stop() {
    local list b
    list=$(brokers "$@")
    lock
    for b in $list; do "stop_$b"; done
    # The next start tries the preferred storage engine again.
    for b in $list; do rm -f "$RUN/$b.engine"; done
    # Our epmd only serves our rabbit node (it is kept across a restart).
    [[ $list == *rabbit* ]] && stop_epmd
    log "stopped: ${list//$'\n'/ }"
}

cmd_restart() {
    (($# == 1)) || die "usage: $0 restart rabbit|kafka|kafka-durable|sqs|redis|postgres"
    local b
    case $1 in
    kafka | tansu) b=kafka ;; # the in-memory one; `kafka-durable` names the other
    *) b=$(brokers "$1") ;;
    esac
    [[ $b == *$'\n'* ]] && die "restart takes exactly one broker"
    lock
    if ! "ours_$b" && "probe_$b"; then
        die "$b is running but was not started by this script; cannot restart it"
    fi
    "ensure_$b" # fail before stopping anything if it could not start again
    local start
    start=$(now_ms)
    log "restarting $b"
    "stop_$b"
    "start_$b"
    log "$b restarted in $((($(now_ms) - start) / 1000))s"
}

cmd_env() {
    local b
    for b in "${ALL[@]}"; do
        if "ours_$b" || "probe_$b"; then "env_$b"; fi
    done
}

main() {
    local cmd=${1:-}
    (($#)) && shift
    case $cmd in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    restart) cmd_restart "$@" ;;
    env) cmd_env ;;
    rabbitmqctl) rabbitmqctl "$@" ;;
    -h | --help | help)
        sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//' >&2
        ;;
    *)
        sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//' >&2
        exit 2
        ;;
    esac
}

main "$@"
