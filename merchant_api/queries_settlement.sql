-- Named queries of merchant_api.settlement (tables of migration 0010; payments of 0003,
-- refunds of 0008, merchants of 0006, ledger accounts of 0001).

-- --- runs ---------------------------------------------------------------------------------

-- name: try_lock_settlement
-- One settlement action (a run's build, paying due legs) at a time, across processes.
SELECT pg_try_advisory_lock($1);

-- name: unlock_settlement
SELECT pg_advisory_unlock($1);

-- name: run_by_date
SELECT * FROM settlement_runs WHERE business_date = $1;

-- name: run
SELECT * FROM settlement_runs WHERE id = $1;

-- name: insert_run
INSERT INTO settlement_runs (
    id, business_date, covered_from, settlement_date, citizen_scheduled_at,
    state_scheduled_at, created_by, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (business_date) DO NOTHING
RETURNING *;

-- name: finish_run
UPDATE settlement_runs SET status = 'built', built_at = $2
WHERE id = $1 AND status = 'building'
RETURNING *;

-- name: list_runs
-- Newest business date first; $1 is the cursor run's business date (or NULL: from the start).
SELECT * FROM settlement_runs
WHERE ($1::date IS NULL OR business_date < $1)
ORDER BY business_date DESC
LIMIT $2;

-- name: run_totals
SELECT leg, status, count(*)::integer AS legs, sum(amount)::bigint AS amount,
       count(DISTINCT merchant_id)::integer AS merchants
FROM settlement_legs
WHERE run_id = $1
GROUP BY leg, status
ORDER BY leg, status;

-- name: run_merchant_count
SELECT count(DISTINCT merchant_id)::integer FROM settlement_legs WHERE run_id = $1;

-- --- building a run -------------------------------------------------------------------------

-- name: dues
-- What each merchant is owed for its sales dated on or before $1 (the run's business date),
-- net of every refund so far, less what earlier legs took (scheduled or paid; held state
-- legs apart, because a reinstated merchant gets them released). Merchants that already
-- have legs in run $2 are done (a resumed build skips them).
WITH net AS (
    SELECT merchant_id,
           sum(citizen_amount - (refunded_amount - refunded_subsidy_amount))::bigint
               AS citizen_net,
           sum(subsidy_amount - refunded_subsidy_amount)::bigint AS state_net
    FROM payments
    WHERE business_date <= $1
    GROUP BY merchant_id
),
taken AS (
    SELECT l.merchant_id,
           coalesce(sum(l.amount) FILTER (
               WHERE l.leg = 'citizen_share' AND l.status IN ('scheduled', 'paid')), 0)::bigint
               AS citizen_taken,
           coalesce(sum(l.amount) FILTER (
               WHERE l.leg = 'state_share' AND l.status IN ('scheduled', 'paid')), 0)::bigint
               AS state_taken,
           coalesce(sum(l.amount) FILTER (WHERE l.status = 'held'), 0)::bigint AS state_held,
           coalesce(array_agg(l.id ORDER BY l.id) FILTER (WHERE l.status = 'held'), '{}')
               AS held_ids,
           max(r.business_date) FILTER (WHERE r.business_date < $1) AS last_date
    FROM settlement_legs l
    JOIN settlement_runs r ON r.id = l.run_id
    GROUP BY l.merchant_id
),
counts AS (
    SELECT p.merchant_id, count(*)::integer AS payment_count, min(p.business_date) AS first_date
    FROM payments p
    LEFT JOIN taken t ON t.merchant_id = p.merchant_id
    WHERE p.business_date <= $1 AND (t.last_date IS NULL OR p.business_date > t.last_date)
    GROUP BY p.merchant_id
),
due AS (
    SELECT m.id AS merchant_id, m.status, m.bank_code,
           m.citizen_payable_account_id, m.state_payable_account_id,
           n.citizen_net - coalesce(t.citizen_taken, 0) AS citizen_due,
           n.state_net - coalesce(t.state_taken, 0) - coalesce(t.state_held, 0) AS state_new,
           coalesce(t.state_held, 0) AS state_held,
           coalesce(t.held_ids, '{}') AS held_ids,
           coalesce(c.payment_count, 0) AS payment_count,
           coalesce(t.last_date + 1, c.first_date, $1::date) AS covered_from
    FROM net n
    JOIN merchants m ON m.id = n.merchant_id
    LEFT JOIN taken t ON t.merchant_id = n.merchant_id
    LEFT JOIN counts c ON c.merchant_id = n.merchant_id
    WHERE m.citizen_payable_account_id IS NOT NULL
      AND NOT EXISTS (
          SELECT 1 FROM settlement_legs x WHERE x.run_id = $2 AND x.merchant_id = m.id)
)
SELECT * FROM due
WHERE citizen_due > 0 OR state_new > 0 OR (state_held > 0 AND status = 'approved')
ORDER BY merchant_id;

-- name: insert_leg
INSERT INTO settlement_legs (
    id, run_id, merchant_id, leg, status, amount, released_amount, payment_count,
    covered_from, covered_to, bank_code, payable_account_id, clearing_account_id,
    reserve_transfer_id, scheduled_at, held_at, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
ON CONFLICT (run_id, merchant_id, leg) DO NOTHING;

-- name: release_held_legs
-- Held state legs carried into leg $2 (the merchant was reinstated).
UPDATE settlement_legs SET status = 'released', released_by = $2
WHERE id = ANY($1::uuid[]) AND status = 'held';

-- --- files ----------------------------------------------------------------------------------

-- name: run_bank_codes
SELECT DISTINCT bank_code FROM settlement_legs
WHERE run_id = $1 AND status IN ('scheduled', 'paid')
ORDER BY bank_code;

-- name: file_lines
-- The legs a bank pays for run $1 (held legs are not paid, so not in the file), in
-- merchant order, citizen share first; with the merchant's encrypted bank account.
SELECT l.id, l.merchant_id, l.leg, l.amount, l.payment_count, l.bank_code,
       m.bank_account_enc
FROM settlement_legs l
JOIN merchants m ON m.id = l.merchant_id
WHERE l.run_id = $1 AND l.bank_code = $2 AND l.status IN ('scheduled', 'paid')
ORDER BY l.merchant_id, l.leg;

-- name: insert_file
INSERT INTO settlement_files (
    run_id, bank_code, content_enc, sha256, control_sum, line_count, total_amount, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (run_id, bank_code) DO NOTHING;

-- name: run_files
SELECT bank_code, sha256, control_sum, line_count, total_amount, created_at
FROM settlement_files WHERE run_id = $1 ORDER BY bank_code;

-- name: run_file
SELECT * FROM settlement_files WHERE run_id = $1 AND bank_code = $2;

-- --- paying ---------------------------------------------------------------------------------

-- name: due_legs
-- Scheduled legs of run $1 whose time has come ($2 = now), with the merchant's status now.
SELECT l.id, l.merchant_id, l.leg, l.amount, l.reserve_transfer_id, r.business_date,
       m.status AS merchant_status
FROM settlement_legs l
JOIN settlement_runs r ON r.id = l.run_id
JOIN merchants m ON m.id = l.merchant_id
WHERE l.run_id = $1 AND l.status = 'scheduled' AND l.scheduled_at <= $2
ORDER BY l.id
LIMIT $3;

-- name: mark_legs_paid
UPDATE settlement_legs l SET status = 'paid', paid_at = $2
FROM settlement_runs r
WHERE l.id = ANY($1::uuid[]) AND l.status = 'scheduled' AND r.id = l.run_id
RETURNING l.id, l.run_id, l.merchant_id, l.leg, l.amount, l.paid_at, r.business_date;

-- name: mark_legs_held
UPDATE settlement_legs SET status = 'held', held_at = $2
WHERE id = ANY($1::uuid[]) AND status = 'scheduled'
RETURNING id;

-- --- merchants' reads -----------------------------------------------------------------------

-- name: merchant_leg
SELECT l.*, r.business_date FROM settlement_legs l
JOIN settlement_runs r ON r.id = l.run_id
WHERE l.id = $1 AND l.merchant_id = $2;

-- name: merchant_leg_position
SELECT created_at, id FROM settlement_legs WHERE id = $1 AND merchant_id = $2;

-- name: list_merchant_legs
-- Newest first; ($2, $3) is the position of the cursor's leg (or NULLs: from the start).
SELECT l.*, r.business_date FROM settlement_legs l
JOIN settlement_runs r ON r.id = l.run_id
WHERE l.merchant_id = $1
  AND ($2::timestamptz IS NULL OR (l.created_at, l.id) < ($2::timestamptz, $3::uuid))
ORDER BY l.created_at DESC, l.id DESC
LIMIT $4;

-- --- reconciliation -------------------------------------------------------------------------

-- name: reconciliation
-- Per merchant with payable accounts ($1: one merchant, or NULL for all): what was paid and
-- refunded (payments, refunds), what its legs settled, reserved and hold, and its two
-- payable accounts' totals in the ledger.
WITH paid AS (
    SELECT merchant_id, sum(citizen_amount)::bigint AS citizen, sum(subsidy_amount)::bigint AS state
    FROM payments WHERE ($1::uuid IS NULL OR merchant_id = $1) GROUP BY merchant_id
),
refunded AS (
    SELECT merchant_id, sum(citizen_amount)::bigint AS citizen, sum(subsidy_amount)::bigint AS state
    FROM refunds WHERE ($1::uuid IS NULL OR merchant_id = $1) GROUP BY merchant_id
),
legs AS (
    SELECT merchant_id,
           sum(amount) FILTER (WHERE leg = 'citizen_share' AND status = 'paid') AS citizen_settled,
           sum(amount) FILTER (WHERE leg = 'citizen_share' AND status = 'scheduled')
               AS citizen_scheduled,
           sum(amount) FILTER (WHERE leg = 'state_share' AND status = 'paid') AS state_settled,
           sum(amount) FILTER (WHERE leg = 'state_share' AND status = 'scheduled')
               AS state_scheduled,
           sum(amount) FILTER (WHERE leg = 'state_share' AND status = 'held') AS state_held
    FROM settlement_legs WHERE ($1::uuid IS NULL OR merchant_id = $1) GROUP BY merchant_id
)
SELECT m.id AS merchant_id,
       coalesce(p.citizen, 0) AS citizen_paid, coalesce(p.state, 0) AS state_paid,
       coalesce(f.citizen, 0) AS citizen_refunded, coalesce(f.state, 0) AS state_refunded,
       coalesce(g.citizen_settled, 0)::bigint AS citizen_settled,
       coalesce(g.citizen_scheduled, 0)::bigint AS citizen_scheduled,
       0::bigint AS citizen_held,
       coalesce(g.state_settled, 0)::bigint AS state_settled,
       coalesce(g.state_scheduled, 0)::bigint AS state_scheduled,
       coalesce(g.state_held, 0)::bigint AS state_held,
       c.credits_posted AS citizen_credits_posted, c.debits_posted AS citizen_debits_posted,
       c.debits_pending AS citizen_debits_pending,
       s.credits_posted AS state_credits_posted, s.debits_posted AS state_debits_posted,
       s.debits_pending AS state_debits_pending
FROM merchants m
JOIN ledger_accounts c ON c.id = m.citizen_payable_account_id
JOIN ledger_accounts s ON s.id = m.state_payable_account_id
LEFT JOIN paid p ON p.merchant_id = m.id
LEFT JOIN refunded f ON f.merchant_id = m.id
LEFT JOIN legs g ON g.merchant_id = m.id
WHERE ($1::uuid IS NULL OR m.id = $1)
ORDER BY m.id;

-- name: clearing_totals
-- The bank clearing accounts (code 302) against every leg: credited exactly by the legs.
SELECT
    (SELECT coalesce(sum(credits_posted), 0)::bigint FROM ledger_accounts
     WHERE id IN (SELECT DISTINCT clearing_account_id FROM settlement_legs)) AS credits_posted,
    (SELECT coalesce(sum(credits_pending), 0)::bigint FROM ledger_accounts
     WHERE id IN (SELECT DISTINCT clearing_account_id FROM settlement_legs)) AS credits_pending,
    (SELECT coalesce(sum(amount), 0)::bigint FROM settlement_legs WHERE status = 'paid')
        AS settled,
    (SELECT coalesce(sum(amount), 0)::bigint FROM settlement_legs WHERE status = 'scheduled')
        AS scheduled;
