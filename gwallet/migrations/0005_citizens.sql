-- 0005: citizens (issue 4): identity, credentials, sessions, top-ups, enrolments.
-- See wallet/__init__.py for the design and docs/SECURITY.md for the personal data and PINs.

-- One row per citizen, one citizen per national ID. The national ID, phone and name are
-- stored only AES-256-GCM encrypted (gwallet/pii.py: each ciphertext carries its key id and
-- is bound to this row's id and its column), and the national ID also as an HMAC-SHA256
-- digest (its own key) for the one-account-per-person lookup. What eligibility rules need
-- (birth date, home province and district) is in clear.
CREATE TABLE citizens (
    id uuid PRIMARY KEY,
    national_id_digest bytea NOT NULL CHECK (length(national_id_digest) = 32),
    national_id_digest_key_id text NOT NULL,
    national_id_encrypted bytea NOT NULL,
    phone_encrypted bytea NOT NULL,
    full_name_encrypted bytea NOT NULL,
    birth_date date NOT NULL,
    nationality text NOT NULL DEFAULT 'TH' CHECK (nationality ~ '^[A-Z]{2}$'),
    province_code text NOT NULL CHECK (province_code ~ '^[0-9]{2}$'),
    district_code text NOT NULL
        CHECK (district_code ~ '^[0-9]{4}$' AND left(district_code, 2) = province_code),
    taxpayer boolean NOT NULL DEFAULT false,
    -- The citizen's own-money wallet: a ledger account (code 200) that can never go negative.
    wallet_account_id uuid NOT NULL UNIQUE,
    -- PIN: HMAC-SHA256(pepper[pin_key_id], citizen id || PIN); the pepper is never stored here.
    pin_key_id text NOT NULL,
    pin_hash bytea NOT NULL CHECK (length(pin_hash) = 32),
    totp_secret_encrypted bytea NOT NULL,
    totp_confirmed_at timestamptz,
    -- The last TOTP time step accepted: a code is accepted once only (gwallet/totp.py).
    totp_last_step bigint,
    -- Consecutive PIN/TOTP failures and the lock they caused; here and not in Redis, so that
    -- the lock survives a Redis restart.
    failed_attempts integer NOT NULL DEFAULT 0 CHECK (failed_attempts >= 0),
    locked_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- One account per national ID: concurrent duplicate registrations meet here.
    CONSTRAINT citizens_national_id_digest_key UNIQUE (national_id_digest)
);

CREATE TABLE citizen_sessions (
    id uuid PRIMARY KEY,
    citizen_id uuid NOT NULL REFERENCES citizens (id),
    -- sha256 of the bearer token (cst_...); the token itself is never stored.
    token_hash bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL CHECK (expires_at > created_at),
    ended_at timestamptz -- logged out, or ended by a newer session beyond the maximum
);
CREATE INDEX citizen_sessions_citizen ON citizen_sessions (citizen_id, created_at DESC, id);
CREATE INDEX citizen_sessions_expires_at ON citizen_sessions (expires_at);

-- Bank top-ups: one per (partner, bank_reference). The id is the ledger transfer's id,
-- derived from the partner and the reference, so a repeated top-up is the same transfer.
-- Written in the ledger batch's transaction (an engine effect).
CREATE TABLE topups (
    id uuid PRIMARY KEY,
    partner_id text NOT NULL CHECK (partner_id ~ '^[a-z0-9_-]{1,32}$'),
    bank_reference text NOT NULL CHECK (length(bank_reference) BETWEEN 1 AND 64),
    citizen_id uuid NOT NULL,
    wallet_account_id uuid NOT NULL,
    amount bigint NOT NULL CHECK (amount > 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (partner_id, bank_reference)
);

-- Standard Webhooks message ids of processed top-ups: a replayed id is refused. Kept a
-- little longer than the 5-minute timestamp tolerance (bank_webhook_id_retention_seconds);
-- older messages are refused by their timestamp anyway.
CREATE TABLE bank_webhook_ids (
    partner_id text NOT NULL,
    webhook_id text NOT NULL CHECK (length(webhook_id) BETWEEN 1 AND 255),
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partner_id, webhook_id)
);
CREATE INDEX bank_webhook_ids_received_at ON bank_webhook_ids (received_at);

-- A wallet's movements are its ledger transfers (GET /v1/citizen/transactions), newest
-- first. ledger_transfers has no per-account index (docs/LEDGER.md): these are the two the
-- list needs.
CREATE INDEX ledger_transfers_debit_account
    ON ledger_transfers (debit_account_id, batch_id DESC, batch_index DESC);
CREATE INDEX ledger_transfers_credit_account
    ON ledger_transfers (credit_account_id, batch_id DESC, batch_index DESC);

-- Enrolments: a citizen's right in a program (first come, first served within the quota of
-- the version in force). At most one per (program, citizen), whatever its status: a repeated
-- enrolment returns the same one, and a forfeited right is not taken again by the same
-- citizen. No foreign keys (like payments): the program and the citizen come from rows the
-- enrolment has just read, and a key check would share-lock the hot programs row.
-- first_used_at is set by the payment path on the first payment with the program; an active
-- right unused by first_use_deadline is forfeited and its place returns to the quota.
CREATE TABLE enrolments (
    id uuid PRIMARY KEY,
    program_id uuid NOT NULL,
    citizen_id uuid NOT NULL,
    program_version integer NOT NULL CHECK (program_version >= 1),
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'forfeited')),
    enrolled_at timestamptz NOT NULL,
    first_use_deadline timestamptz, -- NULL: the right never lapses
    first_used_at timestamptz,
    forfeited_at timestamptz,
    CONSTRAINT enrolments_once UNIQUE (program_id, citizen_id),
    CONSTRAINT enrolments_forfeited CHECK ((status = 'forfeited') = (forfeited_at IS NOT NULL))
);
CREATE INDEX enrolments_citizen ON enrolments (citizen_id, program_id);
-- The rights that can lapse, by deadline: what the forfeiture release scans.
CREATE INDEX enrolments_lapsing ON enrolments (program_id, first_use_deadline)
    WHERE status = 'active' AND first_used_at IS NULL AND first_use_deadline IS NOT NULL;

-- Active enrolments per program, counted in the very statement that inserts the enrolment:
-- the row lock serialises the last places, and the CHECK refuses the one beyond the quota
-- (the quota of the version in force, written with each count), which aborts the statement
-- and so the enrolment with it. Exact under any concurrency.
CREATE TABLE enrolment_counters (
    program_id uuid PRIMARY KEY,
    enrolled integer NOT NULL CHECK (enrolled >= 0),
    quota integer NOT NULL CHECK (quota >= 0),
    CONSTRAINT enrolment_counters_within_quota CHECK (enrolled <= quota)
);
