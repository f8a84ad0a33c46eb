-- Named queries of gwallet/idempotency.py.

-- name: find_response
SELECT request_fingerprint, response_status, response_body
FROM idempotency_keys
WHERE scope = $1 AND key = $2;

-- name: record_response
-- ON CONFLICT waits for a concurrent transaction holding the same key, then does nothing if
-- it committed: the caller learns it lost and replays the winner's response.
INSERT INTO idempotency_keys (scope, key, request_fingerprint, response_status, response_body)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (scope, key) DO NOTHING
RETURNING true AS won;

-- name: purge_expired
-- At most $2 rows per statement, so one purge never holds many locks for long.
DELETE FROM idempotency_keys
WHERE (scope, key) IN (
    SELECT scope, key
    FROM idempotency_keys
    WHERE created_at < now() - make_interval(hours => $1::int)
    ORDER BY created_at
    LIMIT $2
);
