-- Named queries of the officials' program service (subsidy_rules/service.py); tables of
-- migration 0004 (programs, program_versions, program_funding_requests) and 0003 (payments).

-- --- programs and versions -----------------------------------------------------------------

-- name: insert_program
INSERT INTO programs (id, code, kind, status, latest_version, created_by, created_at, updated_at)
VALUES ($1, $2, $3, 'draft', 1, $4, $5, $5)
ON CONFLICT (code) DO NOTHING
RETURNING id;

-- name: insert_version
INSERT INTO program_versions (program_id, version, spec, content_hash, status, effective_at,
                              created_by, created_at)
VALUES ($1, $2, $3::jsonb, $4, 'draft', $5, $6, $7);

-- name: lock_program
SELECT id, code, kind, status, latest_version, budget_account_id, created_by, created_at,
       updated_at
FROM programs
WHERE id = $1
FOR UPDATE;

-- name: program
SELECT id, code, kind, status, latest_version, budget_account_id, created_by, created_at,
       updated_at
FROM programs
WHERE id = $1;

-- name: program_by_code
SELECT id FROM programs WHERE code = $1;

-- name: list_programs
SELECT id, code, kind, status, latest_version, budget_account_id, created_by, created_at,
       updated_at
FROM programs
WHERE ($1::uuid IS NULL OR id > $1) AND ($3::text IS NULL OR status = $3)
ORDER BY id
LIMIT $2;

-- name: version
SELECT program_id, version, spec::text AS spec, content_hash, status, effective_at,
       created_by, created_at, submitted_by, submitted_at, approved_by, approved_at
FROM program_versions
WHERE program_id = $1 AND version = $2;

-- name: versions_of
SELECT program_id, version, spec::text AS spec, content_hash, status, effective_at,
       created_by, created_at, submitted_by, submitted_at, approved_by, approved_at
FROM program_versions
WHERE program_id = $1 AND version > $2
ORDER BY version
LIMIT $3;

-- name: version_at
-- The version in force at $2: the newest approved version whose effective time has come.
-- (A newer approved version replaces an older one from its effective time on.)
SELECT program_id, version, spec::text AS spec, content_hash, status, effective_at,
       created_by, created_at, submitted_by, submitted_at, approved_by, approved_at
FROM program_versions
WHERE program_id = $1 AND status = 'approved' AND effective_at <= $2
ORDER BY version DESC
LIMIT 1;

-- name: latest_approved_version
SELECT program_id, version, spec::text AS spec, content_hash, status, effective_at,
       created_by, created_at, submitted_by, submitted_at, approved_by, approved_at
FROM program_versions
WHERE program_id = $1 AND status = 'approved'
ORDER BY version DESC
LIMIT 1;

-- name: supersede_version
UPDATE program_versions SET status = 'superseded'
WHERE program_id = $1 AND version = $2 AND status IN ('draft', 'submitted');

-- name: submit_version
UPDATE program_versions SET status = 'submitted', submitted_by = $3, submitted_at = $4
WHERE program_id = $1 AND version = $2 AND status = 'draft';

-- name: approve_version
UPDATE program_versions
SET status = 'approved', approved_by = $3, approved_at = $4, effective_at = $5
WHERE program_id = $1 AND version = $2 AND status = 'submitted';

-- name: update_program
UPDATE programs
SET status = $2, latest_version = $3, budget_account_id = $4, updated_at = $5
WHERE id = $1;

-- --- funding -------------------------------------------------------------------------------

-- name: insert_funding_request
INSERT INTO program_funding_requests (id, program_id, amount, status, requested_by,
                                      requested_at, transfer_id)
VALUES ($1, $2, $3, 'requested', $4, $5, $6)
RETURNING id, program_id, amount, status, requested_by, requested_at, approved_by, approved_at,
          transfer_id;

-- name: funding_request
SELECT id, program_id, amount, status, requested_by, requested_at, approved_by, approved_at,
       transfer_id
FROM program_funding_requests
WHERE id = $1 AND program_id = $2;

-- name: list_funding_requests
SELECT id, program_id, amount, status, requested_by, requested_at, approved_by, approved_at,
       transfer_id
FROM program_funding_requests
WHERE program_id = $1 AND ($2::uuid IS NULL OR id > $2)
ORDER BY id
LIMIT $3;

-- name: funding_committed
-- What is funded or asked for: the budget's ceiling counts both, so that approving every
-- open request can never pass it.
SELECT coalesce(sum(amount) FILTER (WHERE status = 'approved'), 0)::bigint AS funded,
       coalesce(sum(amount), 0)::bigint AS committed
FROM program_funding_requests
WHERE program_id = $1;

-- name: mark_funding_approved
-- Written in the ledger batch that moves the money (an engine Effect), only if it moved.
UPDATE program_funding_requests
SET status = 'approved', approved_by = $2, approved_at = $3
WHERE id = $1 AND status = 'requested'
RETURNING id;

-- --- stats ---------------------------------------------------------------------------------

-- name: budget_account
SELECT debits_pending, debits_posted, credits_pending, credits_posted
FROM ledger_accounts
WHERE id = $1;

-- name: payment_totals
SELECT count(*) AS payments,
       coalesce(sum(amount), 0)::bigint AS amount,
       coalesce(sum(subsidy_amount), 0)::bigint AS subsidy_amount,
       coalesce(sum(citizen_amount), 0)::bigint AS citizen_amount,
       coalesce(sum(refunded_amount), 0)::bigint AS refunded_amount,
       coalesce(sum(refunded_subsidy_amount), 0)::bigint AS refunded_subsidy_amount,
       count(DISTINCT citizen_id) AS citizens,
       count(DISTINCT merchant_id) AS merchants
FROM payments
WHERE program_id = $1;

-- name: payments_by_day
-- The most recent $2 business days with payments.
SELECT business_date AS key, count(*) AS payments,
       coalesce(sum(amount), 0)::bigint AS amount,
       coalesce(sum(subsidy_amount - refunded_subsidy_amount), 0)::bigint AS subsidy_amount
FROM payments
WHERE program_id = $1
GROUP BY business_date
ORDER BY business_date DESC
LIMIT $2;

-- name: payments_by_province
SELECT merchant_province_code AS key, count(*) AS payments,
       coalesce(sum(amount), 0)::bigint AS amount,
       coalesce(sum(subsidy_amount - refunded_subsidy_amount), 0)::bigint AS subsidy_amount
FROM payments
WHERE program_id = $1
GROUP BY merchant_province_code
ORDER BY merchant_province_code
LIMIT $2;

-- name: payments_by_merchant_category
SELECT merchant_category AS key, count(*) AS payments,
       coalesce(sum(amount), 0)::bigint AS amount,
       coalesce(sum(subsidy_amount - refunded_subsidy_amount), 0)::bigint AS subsidy_amount
FROM payments
WHERE program_id = $1
GROUP BY merchant_category
ORDER BY merchant_category
LIMIT $2;

-- name: enrolled
-- The wallet's counter of active enrolments (migration 0005; forfeited rights leave it).
SELECT coalesce((SELECT enrolled FROM enrolment_counters WHERE program_id = $1), 0)::bigint;

-- name: subsidy_between
-- Net subsidy of business days $2..$3 (the burn forecast's window).
SELECT coalesce(sum(subsidy_amount - refunded_subsidy_amount), 0)::bigint AS subsidy_amount
FROM payments
WHERE program_id = $1 AND business_date BETWEEN $2 AND $3;

-- --- simulation ----------------------------------------------------------------------------

-- name: count_payments_in_period
-- $3 NULL: every program's payments (and those without one); else that program's only.
SELECT count(*) FROM payments
WHERE business_date BETWEEN $1 AND $2 AND ($3::uuid IS NULL OR program_id = $3);

-- name: payments_in_period
SELECT id, citizen_id, merchant_id, program_id, amount, subsidy_amount, refunded_subsidy_amount,
       item_category, delivery, merchant_category, merchant_province_code,
       merchant_district_code, citizen_province_code, citizen_district_code, business_date,
       created_at
FROM payments
WHERE business_date BETWEEN $1 AND $2 AND ($3::uuid IS NULL OR program_id = $3)
ORDER BY created_at, id;
