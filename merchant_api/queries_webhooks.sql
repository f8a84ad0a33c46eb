-- Named queries of webhooks (tables of migration 0009). See merchant_api/webhooks.py.

-- --- endpoints ------------------------------------------------------------------------------

-- name: put_endpoint
-- $1 merchant, $2 url, $3 secret (encrypted), $4 now. A PUT (re-)enables the endpoint and
-- forgets its failures; the lease of a delivery in flight is left alone.
INSERT INTO webhook_endpoints (merchant_id, url, secret_enc, created_at, updated_at)
VALUES ($1, $2, $3, $4, $4)
ON CONFLICT (merchant_id) DO UPDATE
SET url = EXCLUDED.url, secret_enc = EXCLUDED.secret_enc, enabled = true, disabled_at = NULL,
    failure_count = 0, failed_events = 0, updated_at = EXCLUDED.updated_at
RETURNING *;

-- name: restart_pending_events
-- After a PUT, the merchant's held or backing-off events are due now, with a fresh retry
-- window: the new endpoint deserves a full day of attempts. $1 merchant, $2 now.
UPDATE webhook_events
SET next_attempt_at = $2, first_attempt_at = NULL
WHERE merchant_id = $1 AND status = 'pending' AND (next_attempt_at > $2 OR first_attempt_at IS NOT NULL);

-- name: endpoint
SELECT e.*,
       (SELECT count(*) FROM webhook_events ev
        WHERE ev.merchant_id = e.merchant_id AND ev.status = 'pending') AS pending_events
FROM webhook_endpoints e
WHERE e.merchant_id = $1;

-- --- the outbox -----------------------------------------------------------------------------

-- name: insert_events
-- Events in the caller's transaction. A merchant without an endpoint gets the event as
-- 'skipped' (nothing to deliver; a later endpoint does not receive the past). Ids are derived
-- from the event's subject, so writing the same event twice writes it once.
INSERT INTO webhook_events (id, merchant_id, type, payload, created_at, status, next_attempt_at)
SELECT n.id, n.merchant_id, n.type, n.payload::jsonb, n.created_at,
       CASE WHEN e.merchant_id IS NULL THEN 'skipped' ELSE 'pending' END, n.created_at
FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[])
     WITH ORDINALITY AS n (id, merchant_id, type, payload, created_at, ord)
LEFT JOIN webhook_endpoints e ON e.merchant_id = n.merchant_id
ORDER BY n.ord
ON CONFLICT (id) DO NOTHING;

-- --- delivery -------------------------------------------------------------------------------

-- name: claim_endpoints
-- Take the lease of up to $4 enabled endpoints whose oldest pending event is due ($1 now),
-- oldest due first. SKIP LOCKED: several processes claim at once without waiting on each
-- other or claiming the same merchant. $2 lease end, $3 lease id.
WITH due AS (
    SELECT e.merchant_id
    FROM webhook_endpoints e
    CROSS JOIN LATERAL (
        SELECT ev.next_attempt_at
        FROM webhook_events ev
        WHERE ev.merchant_id = e.merchant_id AND ev.status = 'pending'
        ORDER BY ev.seq
        LIMIT 1
    ) head
    WHERE e.enabled
      AND (e.locked_until IS NULL OR e.locked_until <= $1)
      AND head.next_attempt_at <= $1
    ORDER BY head.next_attempt_at
    LIMIT $4
    FOR UPDATE OF e SKIP LOCKED
)
UPDATE webhook_endpoints e
SET locked_until = $2, lease_id = $3
FROM due
WHERE e.merchant_id = due.merchant_id
RETURNING e.merchant_id;

-- name: next_event
-- The merchant's oldest pending event and where to send it, if $2 still holds the lease.
SELECT ev.id, ev.type, ev.payload::text AS body, ev.attempts, ev.first_attempt_at,
       ev.next_attempt_at, e.url, e.secret_enc
FROM webhook_endpoints e
CROSS JOIN LATERAL (
    SELECT * FROM webhook_events ev
    WHERE ev.merchant_id = e.merchant_id AND ev.status = 'pending'
    ORDER BY ev.seq
    LIMIT 1
) ev
WHERE e.merchant_id = $1 AND e.lease_id = $2 AND e.enabled;

-- name: insert_attempt
INSERT INTO webhook_attempts (
    event_id, merchant_id, attempt, url, attempted_at, duration_ms, status_code, error, delivered)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9);

-- name: event_delivered
-- $1 event, $2 now. Recorded even if the lease was lost meanwhile: the receiver has it.
UPDATE webhook_events
SET status = 'delivered', attempts = attempts + 1,
    first_attempt_at = coalesce(first_attempt_at, $2), finished_at = $2
WHERE id = $1 AND status = 'pending';

-- name: event_failed
-- $1 event, $2 now, $3 next attempt, $4 given up.
UPDATE webhook_events
SET attempts = attempts + 1, first_attempt_at = coalesce(first_attempt_at, $2),
    next_attempt_at = $3,
    status = CASE WHEN $4::boolean THEN 'failed' ELSE status END,
    finished_at = CASE WHEN $4::boolean THEN $2 ELSE NULL END
WHERE id = $1 AND status = 'pending';

-- name: endpoint_delivered
-- A 2xx: the failures are forgotten and the lease renewed until $3 (more events may follow).
UPDATE webhook_endpoints
SET failure_count = 0, failed_events = 0, locked_until = $3
WHERE merchant_id = $1 AND lease_id = $2
RETURNING merchant_id;

-- name: endpoint_failed
-- A failed attempt: counted, and the lease released (the event waits for its next attempt).
-- An event given up ($3) counts towards disabling: $4 events given up in a row disable the
-- endpoint ($5 now) until the merchant PUTs it again.
UPDATE webhook_endpoints
SET failure_count = failure_count + 1,
    failed_events = failed_events + CASE WHEN $3::boolean THEN 1 ELSE 0 END,
    enabled = enabled AND NOT ($3::boolean AND failed_events + 1 >= $4),
    disabled_at = CASE WHEN enabled AND $3::boolean AND failed_events + 1 >= $4 THEN $5
                       ELSE disabled_at END,
    locked_until = NULL, lease_id = NULL
WHERE merchant_id = $1 AND lease_id = $2
RETURNING enabled;

-- name: release_lease
UPDATE webhook_endpoints
SET locked_until = NULL, lease_id = NULL
WHERE merchant_id = $1 AND lease_id = $2;

-- name: release_leases
-- At shutdown: the leases of deliveries cut short, so another process takes them at once.
UPDATE webhook_endpoints
SET locked_until = NULL, lease_id = NULL
WHERE lease_id = ANY($1::uuid[]);
