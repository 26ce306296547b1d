-- The fence: one row per guarded resource, holding the highest fencing token that wrote to it.
CREATE TABLE IF NOT EXISTS fence (
    resource text PRIMARY KEY,
    token    bigint NOT NULL
);

-- What the job writes (here: a ledger of payment batches). Every row carries its writer's token.
CREATE TABLE IF NOT EXISTS ledger (
    id       bigserial PRIMARY KEY,
    resource text NOT NULL,
    token    bigint NOT NULL,
    note     text NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);
