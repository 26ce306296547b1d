#!/usr/bin/env bash
# A harmless stand-in for a job that must run on exactly one machine at a time.
#
# Run it under leaderrun, which elects one leader and gives the job its identity and a
# fencing token; a real job would pass the token along with every write so that storage can
# refuse writes from a leader that has since been replaced:
#
#   leaderrun --backend etcd://127.0.0.1:2379 -e payments -- examples/process_payments.sh
#
# PAYMENT_BATCHES (default 30) sets how many one-second batches it "processes".
# On SIGTERM (leaderrun forwards it, or stops the job when leadership is lost) it finishes
# the current line, says so and exits 143.
set -euo pipefail

batches=${PAYMENT_BATCHES:-30}
id=${LEADERRUN_ID:-unknown}
token=${LEADERRUN_FENCING_TOKEN:-none}
election=${LEADERRUN_ELECTION:-none}

on_term() {
    # Leave nothing behind: stop the background sleep and reap it before exiting.
    local pids
    pids=$(jobs -p)
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086  # one word per pid, on purpose
        kill $pids 2>/dev/null || true
        wait 2>/dev/null || true
    fi
    echo "payments job (pid $$, fencing token $token): got SIGTERM, stopping cleanly"
    exit 143
}
trap on_term TERM

echo "payments job starting as $id on ${HOSTNAME:-$(uname -n)} (pid $$)," \
     "election $election, fencing token $token"
for ((i = 1; i <= batches; i++)); do
    echo "processing payment batch $i/$batches with fencing token $token"
    # Sleep in the background and wait for it, so SIGTERM is handled at once, not after it.
    sleep 1 &
    wait $!
done
echo "payments job done: $batches batches processed with fencing token $token"
