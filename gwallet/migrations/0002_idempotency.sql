-- Stored responses of requests made with an Idempotency-Key (gwallet/idempotency.py).
-- A row is written in the same transaction as the request's effect, so it exists exactly
-- when the effect does. Rows are immutable; they are only deleted by the retention purge.
CREATE TABLE idempotency_keys (
    scope text NOT NULL CHECK (length(scope) BETWEEN 1 AND 255),
    key text NOT NULL CHECK (key ~ '^[\x20-\x7e]{1,255}$'),
    request_fingerprint bytea NOT NULL CHECK (length(request_fingerprint) = 32),
    response_status smallint NOT NULL CHECK (response_status BETWEEN 200 AND 599),
    response_body bytea NOT NULL CHECK (length(response_body) <= 1048576),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

-- The purge deletes by age.
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
