-- The double-entry ledger (ledger_core). Money moves only by inserting transfers; account
-- totals are the running sums of those transfers, kept in the same transaction.

CREATE TABLE ledger_accounts (
    id uuid PRIMARY KEY,
    ledger integer NOT NULL CHECK (ledger > 0),
    code integer NOT NULL CHECK (code > 0),
    debits_must_not_exceed_credits boolean NOT NULL DEFAULT false,
    credits_must_not_exceed_debits boolean NOT NULL DEFAULT false,
    closed boolean NOT NULL DEFAULT false,
    -- Touched by many concurrent transfers (a program budget, the treasury): the engine
    -- locks it last in a batch, for the shortest time (see ledger_core/engine.py).
    shared boolean NOT NULL DEFAULT false,
    debits_pending bigint NOT NULL DEFAULT 0 CHECK (debits_pending >= 0),
    debits_posted bigint NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
    credits_pending bigint NOT NULL DEFAULT 0 CHECK (credits_pending >= 0),
    credits_posted bigint NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
    user_data_128 uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000',
    user_data_64 bigint NOT NULL DEFAULT 0,
    user_data_32 integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ledger_accounts_flags_exclusive
        CHECK (NOT (debits_must_not_exceed_credits AND credits_must_not_exceed_debits)),
    -- The limit flags, enforced a second time by the database itself.
    CONSTRAINT ledger_accounts_debits_must_not_exceed_credits
        CHECK (NOT debits_must_not_exceed_credits
               OR debits_pending + debits_posted <= credits_posted),
    CONSTRAINT ledger_accounts_credits_must_not_exceed_debits
        CHECK (NOT credits_must_not_exceed_debits
               OR credits_pending + credits_posted <= debits_posted)
);

CREATE SEQUENCE ledger_batch_id_seq AS bigint;

-- No foreign keys to ledger_accounts: the engine locks both accounts of a transfer before it
-- inserts it (so they exist), accounts are never deleted (a trigger below), and verify checks
-- it again. The FK checks cost a quarter of the batch's time under the budget row's lock
-- (BENCHMARKS.md). Likewise no per-account index yet: features that list an account's
-- transfers add the index they need.
CREATE TABLE ledger_transfers (
    id uuid PRIMARY KEY,
    debit_account_id uuid NOT NULL,
    credit_account_id uuid NOT NULL,
    amount bigint NOT NULL CHECK (amount > 0),
    ledger integer NOT NULL CHECK (ledger > 0),
    code integer NOT NULL CHECK (code > 0),
    flags integer NOT NULL CHECK (flags >= 0 AND flags < 16),
    pending_id uuid REFERENCES ledger_transfers (id),
    timeout_seconds integer NOT NULL DEFAULT 0 CHECK (timeout_seconds >= 0),
    user_data_128 uuid NOT NULL,
    user_data_64 bigint NOT NULL,
    user_data_32 integer NOT NULL,
    batch_id bigint NOT NULL,
    batch_index integer NOT NULL CHECK (batch_index >= 0),
    created_at timestamptz NOT NULL,
    expires_at timestamptz,
    CONSTRAINT ledger_transfers_accounts_differ CHECK (debit_account_id <> credit_account_id),
    -- pending (2), post (4) and void (8) are mutually exclusive
    CONSTRAINT ledger_transfers_one_kind CHECK ((flags & 14) IN (0, 2, 4, 8)),
    -- exactly the posts and voids name a pending transfer
    CONSTRAINT ledger_transfers_pending_id CHECK ((pending_id IS NOT NULL) = ((flags & 12) <> 0)),
    CONSTRAINT ledger_transfers_timeout_only_pending CHECK (timeout_seconds = 0 OR (flags & 2) <> 0),
    UNIQUE (batch_id, batch_index)
);

-- Transfers whose first attempt failed: their ids can never succeed later.
CREATE TABLE ledger_failed_transfers (
    id uuid PRIMARY KEY,
    result smallint NOT NULL,
    failed_at timestamptz NOT NULL
);

-- How each pending transfer was resolved: at most once (the primary key).
CREATE TABLE ledger_pending_resolutions (
    pending_id uuid PRIMARY KEY REFERENCES ledger_transfers (id),
    status smallint NOT NULL CHECK (status IN (1, 2, 3)), -- posted, voided, expired
    transfer_id uuid REFERENCES ledger_transfers (id),
    batch_id bigint NOT NULL,
    resolved_at timestamptz NOT NULL,
    CONSTRAINT ledger_pending_resolutions_by_transfer CHECK ((transfer_id IS NULL) = (status = 3))
);
CREATE INDEX ledger_pending_resolutions_batch ON ledger_pending_resolutions (batch_id);

-- Work queue of pending transfers that may expire (a row leaves when its pending resolves).
CREATE TABLE ledger_pending_expiries (
    pending_id uuid PRIMARY KEY REFERENCES ledger_transfers (id),
    expires_at timestamptz NOT NULL
);
CREATE INDEX ledger_pending_expiries_due ON ledger_pending_expiries (expires_at);

-- The hash chain: one link per committed batch, dense in seq.
CREATE TABLE ledger_chain (
    seq bigint PRIMARY KEY CHECK (seq > 0),
    batch_id bigint NOT NULL UNIQUE,
    transfer_count integer NOT NULL,
    expiry_count integer NOT NULL,
    prev_link bytea NOT NULL CHECK (length(prev_link) = 32),
    link bytea NOT NULL CHECK (length(link) = 32),
    created_at timestamptz NOT NULL
);

CREATE TABLE ledger_chain_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq bigint NOT NULL,
    link bytea NOT NULL CHECK (length(link) = 32)
);
INSERT INTO ledger_chain_head (singleton, seq, link) VALUES (true, 0, '\x'::bytea || decode(repeat('00', 32), 'hex'));

CREATE TABLE ledger_checkpoints (
    seq bigint PRIMARY KEY REFERENCES ledger_chain (seq),
    link bytea NOT NULL CHECK (length(link) = 32),
    public_key bytea NOT NULL,
    signature bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Appends one link under the head's row lock, so batches of several processes are
-- totally ordered. The head is always the last row a batch locks (after its accounts, in
-- sorted order), so this cannot deadlock.
CREATE FUNCTION ledger_chain_append(
    p_batch_id bigint, p_content bytea, p_transfer_count integer, p_expiry_count integer,
    p_created_at timestamptz
) RETURNS TABLE (seq bigint, link bytea)
LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
    v_prev bytea;
    v_link bytea;
BEGIN
    SELECT h.seq, h.link INTO v_seq, v_prev FROM ledger_chain_head h WHERE h.singleton FOR UPDATE;
    v_seq := v_seq + 1;
    v_link := sha256(v_prev || p_content);
    UPDATE ledger_chain_head SET seq = v_seq, link = v_link WHERE singleton;
    INSERT INTO ledger_chain (seq, batch_id, transfer_count, expiry_count, prev_link, link, created_at)
    VALUES (v_seq, p_batch_id, p_transfer_count, p_expiry_count, v_prev, v_link, p_created_at);
    RETURN QUERY SELECT v_seq, v_link;
END
$$;

-- History is immutable: transfers, failures, resolutions, the chain and checkpoints are
-- never updated or deleted. Only a superuser who disables triggers can, and verify sees it.
CREATE FUNCTION ledger_forbid_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger history is immutable: % on % is not allowed', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE TRIGGER ledger_accounts_no_delete BEFORE DELETE ON ledger_accounts
    FOR EACH ROW EXECUTE FUNCTION ledger_forbid_change();
CREATE TRIGGER ledger_accounts_no_truncate BEFORE TRUNCATE ON ledger_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_forbid_change();
CREATE TRIGGER ledger_transfers_immutable BEFORE UPDATE OR DELETE ON ledger_transfers
    FOR EACH ROW EXECUTE FUNCTION ledger_forbid_change();
CREATE TRIGGER ledger_transfers_no_truncate BEFORE TRUNCATE ON ledger_transfers
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_forbid_change();
CREATE TRIGGER ledger_failed_transfers_immutable BEFORE UPDATE OR DELETE ON ledger_failed_transfers
    FOR EACH ROW EXECUTE FUNCTION ledger_forbid_change();
CREATE TRIGGER ledger_pending_resolutions_immutable BEFORE UPDATE OR DELETE ON ledger_pending_resolutions
    FOR EACH ROW EXECUTE FUNCTION ledger_forbid_change();
CREATE TRIGGER ledger_chain_immutable BEFORE UPDATE OR DELETE ON ledger_chain
    FOR EACH ROW EXECUTE FUNCTION ledger_forbid_change();
CREATE TRIGGER ledger_chain_no_truncate BEFORE TRUNCATE ON ledger_chain
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_forbid_change();
CREATE TRIGGER ledger_checkpoints_immutable BEFORE UPDATE OR DELETE ON ledger_checkpoints
    FOR EACH ROW EXECUTE FUNCTION ledger_forbid_change();
