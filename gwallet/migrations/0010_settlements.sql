-- 0010: T+1 settlement in two legs (issue 5). See merchant_api/settlement.py for the design.
--
-- A run settles one business date (once: business_date is unique). It makes, per merchant,
-- up to two legs (citizen share, state share), each moving money from the merchant's payable
-- account to the bank clearing account (ledger code 302, one per bank_code) by a pending
-- ledger transfer made at the run (the reservation) and posted when the leg's time has come.
-- A suspended merchant's state leg is held: no money moves (or the reservation is voided);
-- a later run after reinstatement releases it into a new leg (status 'released',
-- released_by naming that leg). The ledger is the money; these rows say why it moved.
CREATE TABLE settlement_runs (
    id uuid PRIMARY KEY,
    business_date date NOT NULL UNIQUE, -- a run per business date, at most
    covered_from date NOT NULL, -- the first of the non-business days carried into this date
    settlement_date date NOT NULL, -- the next business day: when the legs are paid
    citizen_scheduled_at timestamptz NOT NULL,
    state_scheduled_at timestamptz NOT NULL,
    status text NOT NULL DEFAULT 'building' CHECK (status IN ('building', 'built')),
    created_by text NOT NULL CHECK (char_length(created_by) BETWEEN 1 AND 64),
    created_at timestamptz NOT NULL,
    built_at timestamptz,
    CONSTRAINT settlement_runs_dates
        CHECK (covered_from <= business_date AND business_date < settlement_date),
    CONSTRAINT settlement_runs_built CHECK ((status = 'built') = (built_at IS NOT NULL))
);
CREATE INDEX settlement_runs_created ON settlement_runs (created_at DESC, id);

CREATE TABLE settlement_legs (
    id uuid PRIMARY KEY, -- stl_...
    run_id uuid NOT NULL REFERENCES settlement_runs (id),
    merchant_id uuid NOT NULL REFERENCES merchants (id),
    leg text NOT NULL CHECK (leg IN ('citizen_share', 'state_share')),
    status text NOT NULL CHECK (status IN ('scheduled', 'paid', 'held', 'released')),
    amount bigint NOT NULL CHECK (amount > 0 AND amount <= 1000000000000000),
    -- The part of amount that is earlier held legs released into this one.
    released_amount bigint NOT NULL DEFAULT 0
        CHECK (released_amount >= 0 AND released_amount <= amount),
    payment_count integer NOT NULL CHECK (payment_count >= 0),
    covered_from date NOT NULL, -- the sales dates this leg covers (Asia/Bangkok)
    covered_to date NOT NULL,
    bank_code text NOT NULL CHECK (bank_code ~ '^[0-9]{3}$'),
    payable_account_id uuid NOT NULL,
    clearing_account_id uuid NOT NULL,
    reserve_transfer_id uuid UNIQUE, -- the pending transfer; NULL: held at the run
    scheduled_at timestamptz NOT NULL,
    paid_at timestamptz,
    held_at timestamptz,
    released_by uuid REFERENCES settlement_legs (id),
    created_at timestamptz NOT NULL,
    UNIQUE (run_id, merchant_id, leg),
    CONSTRAINT settlement_legs_covered CHECK (covered_from <= covered_to),
    -- Only the state share is ever held (DOMAIN.md: suspension holds the state share).
    CONSTRAINT settlement_legs_hold_state_only
        CHECK (leg = 'state_share' OR status IN ('scheduled', 'paid')),
    CONSTRAINT settlement_legs_paid CHECK ((status = 'paid') = (paid_at IS NOT NULL)),
    CONSTRAINT settlement_legs_held
        CHECK (status NOT IN ('held', 'released') OR held_at IS NOT NULL),
    CONSTRAINT settlement_legs_released CHECK ((status = 'released') = (released_by IS NOT NULL)),
    CONSTRAINT settlement_legs_reserved
        CHECK (status NOT IN ('scheduled', 'paid') OR reserve_transfer_id IS NOT NULL)
);
CREATE INDEX settlement_legs_merchant ON settlement_legs (merchant_id, created_at DESC, id);
CREATE INDEX settlement_legs_run ON settlement_legs (run_id, bank_code, merchant_id);
CREATE INDEX settlement_legs_due
    ON settlement_legs (run_id, scheduled_at) WHERE status = 'scheduled';
CREATE INDEX settlement_legs_held ON settlement_legs (merchant_id) WHERE status = 'held';

-- One file per bank per run, made once when the run is built. It holds account numbers in
-- clear, so it is stored AES-GCM encrypted like other personal data (gwallet/pii.py), bound
-- to the run and bank; sha256 is of the plain file. Never changed: a trigger refuses it.
CREATE TABLE settlement_files (
    run_id uuid NOT NULL REFERENCES settlement_runs (id),
    bank_code text NOT NULL CHECK (bank_code ~ '^[0-9]{3}$'),
    content_enc bytea NOT NULL,
    sha256 bytea NOT NULL CHECK (length(sha256) = 32),
    control_sum text NOT NULL,
    line_count integer NOT NULL CHECK (line_count >= 0),
    total_amount bigint NOT NULL CHECK (total_amount >= 0),
    created_at timestamptz NOT NULL,
    PRIMARY KEY (run_id, bank_code)
);

CREATE FUNCTION settlement_files_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'settlement files are never changed or deleted';
END;
$$;
CREATE TRIGGER settlement_files_no_update BEFORE UPDATE OR DELETE ON settlement_files
    FOR EACH ROW EXECUTE FUNCTION settlement_files_immutable();
