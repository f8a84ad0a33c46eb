-- Payments: one row per QR payment, written in the same ledger batch transaction as its
-- transfers (merchant_api). The program and merchant/citizen attributes are copied at
-- payment time so that statistics and simulations read one table, and so that later edits
-- of a merchant or citizen never rewrite history. No foreign keys: ids come from locked or
-- validated rows on the payment path, and the ledger transfers (user_data_128 = payment id)
-- are the money.
CREATE TABLE payments (
    id uuid PRIMARY KEY,
    payment_request_id uuid NOT NULL UNIQUE, -- a dynamic QR is paid at most once
    citizen_id uuid NOT NULL,
    merchant_id uuid NOT NULL,
    program_id uuid, -- NULL: paid without a program
    program_version integer,
    amount bigint NOT NULL CHECK (amount > 0),
    subsidy_amount bigint NOT NULL CHECK (subsidy_amount >= 0),
    citizen_amount bigint NOT NULL CHECK (citizen_amount >= 0),
    refunded_amount bigint NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0),
    refunded_subsidy_amount bigint NOT NULL DEFAULT 0 CHECK (refunded_subsidy_amount >= 0),
    bounded_by text, -- which rule bounded the subsidy (subsidy_rules.decision)
    item_category text,
    delivery boolean NOT NULL DEFAULT false,
    merchant_category text NOT NULL,
    merchant_province_code text NOT NULL,
    merchant_district_code text NOT NULL,
    citizen_province_code text NOT NULL,
    citizen_district_code text NOT NULL,
    business_date date NOT NULL, -- the Asia/Bangkok date of created_at
    created_at timestamptz NOT NULL,
    CONSTRAINT payments_split CHECK (subsidy_amount + citizen_amount = amount),
    CONSTRAINT payments_refund_within_amount CHECK (refunded_amount <= amount),
    CONSTRAINT payments_refund_subsidy_within CHECK (refunded_subsidy_amount <= subsidy_amount),
    CONSTRAINT payments_program_version CHECK ((program_id IS NULL) = (program_version IS NULL))
);
CREATE INDEX payments_program_day ON payments (program_id, business_date);
CREATE INDEX payments_citizen ON payments (citizen_id, created_at DESC, id);
CREATE INDEX payments_merchant ON payments (merchant_id, created_at DESC, id);
