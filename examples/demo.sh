#!/usr/bin/env bash
# leaderrun in 30 seconds: three candidates, one leader runs the payments job; the leader is
# killed with SIGKILL and another takes over with a new, higher fencing token.
#
# Everything runs on this machine: a throwaway etcd on a free loopback port with a temporary
# data directory, removed again at the end (also on Ctrl-C or failure). Run it with
# `make demo`, or `bash examples/demo.sh` after `make deps`.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
LEADERRUN=${DEMO_LEADERRUN:-$ROOT/.venv/bin/leaderrun}
JOB=$ROOT/examples/process_payments.sh
ELECTION=payments
NODES=(node-a node-b node-c)

for tool in "$PY" "$LEADERRUN"; do
    [ -x "$tool" ] || { echo "demo: $tool not found; run 'make deps' first" >&2; exit 1; }
done
for tool in etcd etcdctl timeout; do
    command -v "$tool" >/dev/null || { echo "demo: $tool not found; run 'make deps'" >&2; exit 1; }
done

# Settings in the caller's environment must not change what the demo shows.
while read -r var; do unset "$var"; done < <(compgen -e | grep -E '^(LEADERRUN|ETCDCTL)_' || true)
export ETCDCTL_API=3
export PAYMENT_BATCHES=${PAYMENT_BATCHES:-12}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/leaderrun-demo.XXXXXX")
ETCD_PID=
LISTEN_PID=
declare -A PID=()        # node -> leaderrun pid
declare -A EXITED=()     # node -> exit status, once reaped

banner() { printf '\n=== %s ===\n' "$*"; }

cleanup() {
    local status=$? pids=() job node
    trap - EXIT INT TERM
    for node in "${NODES[@]}"; do
        [ -n "${PID[$node]:-}" ] && [ -z "${EXITED[$node]:-}" ] && pids+=("${PID[$node]}")
    done
    # Jobs whose pids the payments script printed: should be gone already, but if leaderrun
    # failed to stop one, the demo must not leave it behind.
    while read -r job; do
        pids+=("$job")
    done < <(sed -n 's/.*payments job starting as .* (pid \([0-9]*\)).*/\1/p' \
             "$WORK"/*.log 2>/dev/null)
    [ -n "$LISTEN_PID" ] && pids+=("$LISTEN_PID")
    if [ ${#pids[@]} -gt 0 ]; then
        kill -TERM "${pids[@]}" 2>/dev/null || true
        wait_until 5 "everything to stop" all_gone "${pids[@]}" 2>/dev/null || true
        kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
    if [ -n "$ETCD_PID" ]; then
        kill -TERM "$ETCD_PID" 2>/dev/null || true
        wait "$ETCD_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_until TIMEOUT DESCRIPTION COMMAND...: poll COMMAND until it succeeds; fail after TIMEOUT s.
wait_until() {
    local timeout=$1 what=$2 deadline
    shift 2
    deadline=$(($(date +%s%N) + timeout * 1000000000))
    until "$@"; do
        if [ "$(date +%s%N)" -ge "$deadline" ]; then
            echo "demo: gave up after ${timeout}s waiting for $what" >&2
            return 1
        fi
        sleep 0.1
    done
}

lines_in() {   # lines_in NODE PATTERN: how many lines of NODE's output match
    local n
    n=$(grep -c -- "$2" "$WORK/$1.log" 2>/dev/null) || true
    echo "${n:-0}"
}
has_batches() { [ "$(lines_in "$1" 'processing payment batch')" -ge "$2" ]; }
etcd_healthy() { etcdctl --endpoints "$ENDPOINT" --command-timeout=1s endpoint health &>/dev/null; }
gone() {   # no such process, or only a zombie left for its parent to reap
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    [ "${stat%% *}" = Z ]
}
all_gone() {
    local pid
    for pid in "$@"; do gone "$pid" || return 1; done
}
token_of() {
    sed -n 's/.*payments job starting as .*fencing token \([0-9]*\).*/\1/p' "$WORK/$1.log" | tail -1
}
job_pid_of() {
    sed -n 's/.*payments job starting as .* (pid \([0-9]*\)).*/\1/p' "$WORK/$1.log" | tail -1
}
leader_among() {   # prints the first node in "$@" whose job has started
    local node
    for node in "$@"; do
        if [ "$(lines_in "$node" 'payments job starting')" -gt 0 ]; then
            echo "$node"
            return 0
        fi
    done
    return 1
}

banner "starting a throwaway etcd on a free loopback port (data in $WORK)"
read -r PORT PEER_PORT < <("$PY" -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
ENDPOINT=127.0.0.1:$PORT
BACKEND=etcd://$ENDPOINT
etcd --name demo --data-dir "$WORK/etcd" \
    --listen-client-urls "http://$ENDPOINT" --advertise-client-urls "http://$ENDPOINT" \
    --listen-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-cluster "demo=http://127.0.0.1:$PEER_PORT" \
    --logger zap --log-outputs stderr >"$WORK/etcd.out" 2>&1 &
ETCD_PID=$!
if ! wait_until 20 "etcd to serve" etcd_healthy; then
    tail -20 "$WORK/etcd.out" >&2
    exit 1
fi
echo "etcd is serving on $ENDPOINT (pid $ETCD_PID)"

banner "watching the election with: etcdctl elect --listen /leaderrun/$ELECTION"
timeout 40 etcdctl --endpoints "$ENDPOINT" elect --listen "/leaderrun/$ELECTION" \
    > >(sed -u 's/^/[etcdctl elect --listen] /') 2>&1 &
LISTEN_PID=$!

banner "starting three candidates for election '$ELECTION', 0.5 s apart"
for node in "${NODES[@]}"; do
    echo "\$ leaderrun --backend $BACKEND -e $ELECTION --id $node -v --ttl 5s --kill-grace 2s" \
         "-- examples/process_payments.sh"
    # Output (leaderrun's log on stderr and the job's stdout) is prefixed with the node name
    # on screen and kept in a file to follow what happens. $! is leaderrun's own pid.
    "$LEADERRUN" --backend "$BACKEND" -e "$ELECTION" --id "$node" -v --ttl 5s --kill-grace 2s -- "$JOB" \
        > >(tee -a "$WORK/$node.log" | sed -u "s/^/$node | /") 2>&1 &
    PID[$node]=$!
    sleep 0.5   # pacing only, so that the queue order is easy to see
done

wait_until 20 "a leader to start the payments job" leader_among "${NODES[@]}" >/dev/null
OLD=$(leader_among "${NODES[@]}")
wait_until 10 "$OLD's job to process a few batches" has_batches "$OLD" 3
OLD_TOKEN=$(token_of "$OLD")
OLD_JOB=$(job_pid_of "$OLD")

banner "killing the leader ($OLD, pid ${PID[$OLD]}) with SIGKILL"
kill -KILL "${PID[$OLD]}"
wait "${PID[$OLD]}" 2>/dev/null || true
EXITED[$OLD]=killed
if wait_until 3 "the old leader's job (pid $OLD_JOB) to be stopped" gone "$OLD_JOB"; then
    echo "the old leader's job (pid $OLD_JOB) is gone: leaderrun's death took its child along"
fi

REST=()
for node in "${NODES[@]}"; do [ "$node" != "$OLD" ] && REST+=("$node"); done
wait_until 15 "another candidate to take over" leader_among "${REST[@]}" >/dev/null
NEW=$(leader_among "${REST[@]}")
NEW_TOKEN=$(token_of "$NEW")
banner "new leader: $NEW, fencing token $NEW_TOKEN (was $OLD_TOKEN under $OLD)"
wait_until 10 "$NEW's job to process a couple of batches" has_batches "$NEW" 2

banner "stopping the remaining candidates with SIGTERM (leaderrun forwards it to the job)"
for node in "${REST[@]}"; do
    kill -TERM "${PID[$node]}" 2>/dev/null || true
done
for node in "${REST[@]}"; do
    status=0
    # Bounded: cleanup SIGKILLs anything the timeout leaves.
    if wait_until 10 "$node to exit" gone "${PID[$node]}"; then
        wait "${PID[$node]}" 2>/dev/null || status=$?
        EXITED[$node]=$status
        echo "$node: leaderrun exited with status $status"
    fi
done

banner "done; removing etcd and $WORK"
