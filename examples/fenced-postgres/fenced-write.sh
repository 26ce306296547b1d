#!/bin/sh
# fenced-write.sh RESOURCE NOTE -- write one ledger row, guarded by leaderrun's fencing token.
#
# Run under leaderrun (it sets LEADERRUN_FENCING_TOKEN); connection settings come from the usual
# libpq variables (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSFILE...).
#
# One statement, so one transaction: it raises the resource's fence to our token unless the
# fence already holds a higher one, and inserts the row only if the fence accepted us. A
# concurrent writer blocks on the fence row and re-checks against the committed value.
# Exit 0: written. Exit 3: refused, a newer leader has written since (we are a stale leader).
set -eu
resource=$1
note=$2
token=${LEADERRUN_FENCING_TOKEN:?"run me under leaderrun (no LEADERRUN_FENCING_TOKEN)"}
case $token in '' | *[!0-9]*) echo "bad fencing token: $token" >&2; exit 2 ;; esac

id=$(psql -X -q -At -v ON_ERROR_STOP=1 \
    -v resource="$resource" -v token="$token" -v note="$note" <<'SQL'
WITH fence AS (
    INSERT INTO fence (resource, token) VALUES (:'resource', :token)
    ON CONFLICT (resource) DO UPDATE SET token = EXCLUDED.token
        WHERE fence.token <= EXCLUDED.token
    RETURNING token
)
INSERT INTO ledger (resource, token, note)
SELECT :'resource', token, :'note' FROM fence
RETURNING id;
SQL
)
if [ -z "$id" ]; then
    echo "fenced-write: refused: token $token is older than the fence of $resource" >&2
    exit 3
fi
echo "fenced-write: row $id written to $resource with token $token"
