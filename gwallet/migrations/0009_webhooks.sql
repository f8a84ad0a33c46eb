-- 0009: webhooks (issue 5). See merchant_api/webhooks.py for the design.
--
-- One endpoint per merchant; an outbox of events written in the same transaction as the
-- effect they announce (a payment's ledger batch, a refund's, a settlement's); one row per
-- delivery attempt. A merchant's events are delivered one at a time in `seq` order: the
-- worker that holds the endpoint's lease (locked_until, lease_id) delivers its oldest pending
-- event, and nobody else touches that merchant until the lease is released or runs out.

CREATE TABLE webhook_endpoints (
    merchant_id uuid PRIMARY KEY REFERENCES merchants (id),
    url text NOT NULL CHECK (char_length(url) BETWEEN 1 AND 2048),
    -- whsec_... encrypted with the personal-data cipher (gwallet/pii.py), bound to this row.
    secret_enc bytea NOT NULL,
    enabled boolean NOT NULL DEFAULT true,
    disabled_at timestamptz,
    failure_count integer NOT NULL DEFAULT 0 CHECK (failure_count >= 0), -- attempts failed in a row
    failed_events integer NOT NULL DEFAULT 0 CHECK (failed_events >= 0), -- events given up in a row
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    -- The delivery lease: the worker holding it is the only one delivering this merchant's
    -- events; a worker that dies loses it when locked_until passes.
    locked_until timestamptz,
    lease_id uuid,
    CONSTRAINT webhook_endpoints_disabled CHECK (enabled = (disabled_at IS NULL)),
    CONSTRAINT webhook_endpoints_lease CHECK ((locked_until IS NULL) = (lease_id IS NULL))
);

CREATE TABLE webhook_events (
    id uuid PRIMARY KEY, -- evt_...; derived from the subject, so an event is written once
    seq bigserial NOT NULL, -- delivery order (a later effect gets a larger seq)
    merchant_id uuid NOT NULL, -- no FK: written on the payment path, like payments
    type text NOT NULL
        CHECK (type IN ('payment.succeeded', 'refund.succeeded', 'settlement.paid')),
    payload jsonb NOT NULL, -- the body delivered: {type, id, created_at, data}
    created_at timestamptz NOT NULL,
    -- pending: to deliver; delivered: a 2xx came back; failed: given up after the retry
    -- window; skipped: the merchant had no endpoint when the event happened.
    status text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed', 'skipped')),
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    first_attempt_at timestamptz,
    next_attempt_at timestamptz NOT NULL,
    finished_at timestamptz,
    CONSTRAINT webhook_events_finished CHECK (
        (status IN ('delivered', 'failed')) = (finished_at IS NOT NULL))
);
-- The delivery queue: each merchant's pending events in order.
CREATE INDEX webhook_events_pending ON webhook_events (merchant_id, seq) WHERE status = 'pending';
CREATE INDEX webhook_events_merchant ON webhook_events (merchant_id, created_at DESC);

CREATE TABLE webhook_attempts (
    id bigserial PRIMARY KEY,
    event_id uuid NOT NULL REFERENCES webhook_events (id),
    merchant_id uuid NOT NULL,
    attempt integer NOT NULL CHECK (attempt >= 1),
    url text NOT NULL,
    attempted_at timestamptz NOT NULL,
    duration_ms integer NOT NULL CHECK (duration_ms >= 0),
    status_code integer CHECK (status_code BETWEEN 100 AND 599), -- NULL: no HTTP answer
    error text CHECK (char_length(error) <= 300), -- why it failed without an answer
    delivered boolean NOT NULL,
    CONSTRAINT webhook_attempts_outcome CHECK (status_code IS NOT NULL OR error IS NOT NULL)
);
CREATE INDEX webhook_attempts_event ON webhook_attempts (event_id, attempt);
