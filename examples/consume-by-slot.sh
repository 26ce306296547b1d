#!/bin/sh
# A queue consumer that runs on up to three hosts at once, each on its own partition.
# On every host (a systemd unit's ExecStart, or a shell):
#
#   leaderrun --forever --max-holders 3 -e consume-orders -- /opt/jobs/consume-by-slot.sh
#
# leaderrun gives each holder a slot (0, 1 or 2: the lowest no other holder has) and a fencing
# token of its own; the consumer takes the partition of its slot and passes the token with every
# write, so a holder that lost its slot (paused, cut off) is refused by the queue's store.
# CONSUMER is the real consumer command; without it a stand-in runs until stopped.
set -eu
slot="${LEADERRUN_SLOT:?run me under leaderrun --max-holders N}"
token="${LEADERRUN_FENCING_TOKEN:?run me under leaderrun}"
echo "consuming partition $slot with fencing token $token"
if [ -n "${CONSUMER:-}" ]; then
    exec $CONSUMER --partition "$slot" --fencing-token "$token"
fi
exec sleep infinity
