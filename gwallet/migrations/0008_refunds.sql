-- 0008: refunds (issue 5). A refund gives part or all of a payment back: the citizen's part
-- to the wallet, the subsidy part to the program's budget (restoring the citizen's caps by
-- as much), in the same proportion as the payment. Written in the ledger batch that moves
-- the money; the payment row's refunded totals change in the same transaction.
CREATE TABLE refunds (
    id uuid PRIMARY KEY,
    payment_id uuid NOT NULL REFERENCES payments (id),
    merchant_id uuid NOT NULL,
    amount bigint NOT NULL CHECK (amount > 0),
    subsidy_amount bigint NOT NULL CHECK (subsidy_amount >= 0),
    citizen_amount bigint NOT NULL CHECK (citizen_amount >= 0),
    created_at timestamptz NOT NULL,
    CONSTRAINT refunds_split CHECK (subsidy_amount + citizen_amount = amount)
);
CREATE INDEX refunds_payment ON refunds (payment_id, created_at);
