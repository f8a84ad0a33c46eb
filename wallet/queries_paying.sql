-- Named queries of the payment path (wallet/paying.py).

-- name: read_usage
SELECT citizen_id, program_id, day, used_day, month, used_month, used_total, payments,
       first_used_at
FROM subsidy_usage
WHERE (citizen_id, program_id) IN (SELECT * FROM unnest($1::uuid[], $2::uuid[]))

-- name: write_usage
INSERT INTO subsidy_usage (citizen_id, program_id, day, used_day, month, used_month,
                           used_total, payments, first_used_at, updated_at)
SELECT u.*, now()
FROM unnest($1::uuid[], $2::uuid[], $3::date[], $4::bigint[], $5::date[], $6::bigint[],
            $7::bigint[], $8::integer[], $9::timestamptz[])
     AS u (citizen_id, program_id, day, used_day, month, used_month, used_total, payments,
           first_used_at)
ON CONFLICT (citizen_id, program_id) DO UPDATE
SET day = EXCLUDED.day, used_day = EXCLUDED.used_day, month = EXCLUDED.month,
    used_month = EXCLUDED.used_month, used_total = EXCLUDED.used_total,
    payments = EXCLUDED.payments, first_used_at = EXCLUDED.first_used_at,
    updated_at = EXCLUDED.updated_at

-- name: read_requests
SELECT id, status, payment_id, expires_at, paid_at FROM payment_requests WHERE id = ANY($1::uuid[])

-- name: mark_requests_paid
WITH paid AS (
    UPDATE payment_requests AS r
    SET status = 'paid', payment_id = u.payment_id, paid_at = u.paid_at
    FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[]) AS u (id, payment_id, paid_at)
    WHERE r.id = u.id AND r.status = 'open' AND r.expires_at > u.paid_at
    RETURNING r.id
)
SELECT count(*) FROM paid

-- name: pay_context
-- What quote and pay read before the batch, in one round trip (a round trip costs the worker
-- and the server ~0.15 ms each here: BENCHMARKS.md, "Where the time goes"):
-- - payable: the payment request $1 with its merchant, the fields of
--   merchant_api.payment_requests.Payable in order (as its payable_payment_request query);
-- - citizen: the citizen $2's profile and PIN state (for the PIN check without a lock, see
--   WalletContext.payment_pin_matches), and for each active enrolment in an active program
--   the version in effect at $3 (the newest approved one whose effective_at has come), as
--   rows of CITIZEN_COLUMNS (wallet/paying_http.py). One row at least. The spec itself is
--   read only when this process has not decoded that version yet (program_spec).
SELECT
    (SELECT row(r.id, r.merchant_id, r.amount, r.reference, r.item_category, r.status,
                r.payment_id, r.qr_payload, r.created_at, r.expires_at, m.name, m.status,
                m.business_type, m.category, m.province_code, m.district_code,
                m.citizen_payable_account_id, m.state_payable_account_id)
     FROM payment_requests r
     JOIN merchants m ON m.id = r.merchant_id
     WHERE r.id = $1) AS payable,
    ARRAY(
        SELECT row(c.birth_date, c.nationality, c.province_code, c.district_code, c.taxpayer,
                   c.pin_key_id, c.pin_hash, c.failed_attempts, c.locked_until,
                   p.id, p.code, p.budget_account_id, v.version, v.content_hash)
        FROM citizens c
        LEFT JOIN enrolments e ON e.citizen_id = c.id AND e.status = 'active'
            -- a right unused by its first-use deadline pays no more, even before it is
            -- released
            AND (e.first_used_at IS NOT NULL OR e.first_use_deadline IS NULL
                 OR e.first_use_deadline > $3)
        LEFT JOIN programs p ON p.id = e.program_id AND p.status = 'active'
        LEFT JOIN LATERAL (
            SELECT pv.version, pv.content_hash
            FROM program_versions pv
            WHERE pv.program_id = p.id AND pv.approved_at IS NOT NULL AND pv.effective_at <= $3
            ORDER BY pv.effective_at DESC, pv.version DESC
            LIMIT 1
        ) v ON true
        WHERE c.id = $2
    ) AS citizen

-- name: program_spec
SELECT spec::text AS spec FROM program_versions WHERE program_id = $1 AND version = $2

-- name: read_payments_for_refund
SELECT id, citizen_id, merchant_id, program_id, amount, subsidy_amount, refunded_amount,
       refunded_subsidy_amount, business_date, created_at
FROM payments
WHERE id = ANY($1::uuid[])

-- name: write_payment_refunds
UPDATE payments AS p
SET refunded_amount = u.refunded_amount, refunded_subsidy_amount = u.refunded_subsidy_amount
FROM unnest($1::uuid[], $2::bigint[], $3::bigint[])
     AS u (id, refunded_amount, refunded_subsidy_amount)
WHERE p.id = u.id

-- name: refund_context
-- What a refund needs besides the payment row: the accounts on both sides.
SELECT p.id, p.citizen_id, p.merchant_id, p.program_id, c.wallet_account_id,
       m.citizen_payable_account_id, m.state_payable_account_id, g.budget_account_id
FROM payments p
JOIN citizens c ON c.id = p.citizen_id
JOIN merchants m ON m.id = p.merchant_id
LEFT JOIN programs g ON g.id = p.program_id
WHERE p.id = $1 AND p.merchant_id = $2

-- name: mark_enrolments_used
-- The first payment with a right marks it used. Returns how many of the rights were
-- forfeited unused meanwhile (not marked): wallet.paying.UsageStore fails the batch then.
WITH marked AS (
    UPDATE enrolments AS e
    SET first_used_at = u.first_used_at
    FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[])
        AS u (citizen_id, program_id, first_used_at)
    WHERE e.citizen_id = u.citizen_id AND e.program_id = u.program_id
      AND e.first_used_at IS NULL AND e.status = 'active'
    RETURNING e.id
)
SELECT count(*) FROM enrolments e
JOIN unnest($1::uuid[], $2::uuid[]) AS u (citizen_id, program_id)
    ON e.citizen_id = u.citizen_id AND e.program_id = u.program_id
WHERE e.status = 'forfeited' AND e.first_used_at IS NULL
  AND e.id NOT IN (SELECT id FROM marked)
