-- Named queries of merchant_api (tables of migration 0006; payments of 0003).

-- --- merchants ----------------------------------------------------------------------------

-- name: insert_merchant
INSERT INTO merchants (
    id, name, business_type, category, province_code, district_code,
    owner_national_id_enc, owner_national_id_index, owner_national_id_index_key_id,
    bank_code, bank_account_enc, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12);

-- name: merchant
SELECT * FROM merchants WHERE id = $1;

-- name: lock_merchant
-- Every change of a merchant's status, and every key rotation, takes this row lock first.
SELECT * FROM merchants WHERE id = $1 FOR UPDATE;

-- name: list_merchants
-- $1 status or NULL for all, $2 cursor id or NULL, $3 limit.
SELECT * FROM merchants
WHERE ($1::text IS NULL OR status = $1) AND ($2::uuid IS NULL OR id > $2)
ORDER BY id
LIMIT $3;

-- name: approve_merchant
UPDATE merchants
SET status = 'approved', approved_at = $2,
    citizen_payable_account_id = $3, state_payable_account_id = $4
WHERE id = $1 AND status = 'pending'
RETURNING *;

-- name: suspend_merchant
UPDATE merchants
SET status = 'suspended', suspended_at = $2, suspension_reason = $3
WHERE id = $1 AND status = 'approved'
RETURNING *;

-- name: reinstate_merchant
UPDATE merchants
SET status = 'approved', suspended_at = NULL, suspension_reason = NULL
WHERE id = $1 AND status = 'suspended'
RETURNING *;

-- --- API keys -----------------------------------------------------------------------------

-- name: insert_api_key
INSERT INTO merchant_api_keys (id, merchant_id, key_hash, key_hint, created_at, expires_at)
VALUES ($1, $2, $3, $4, $5, NULL);

-- name: api_key_principal
-- The key and its merchant, if the key is current or still in its grace period ($2 = now)
-- and the merchant was approved (a suspended merchant still authenticates: it may read).
SELECT k.id AS key_id, k.expires_at, m.id AS merchant_id, m.status
FROM merchant_api_keys k
JOIN merchants m ON m.id = k.merchant_id
WHERE k.key_hash = $1
  AND (k.expires_at IS NULL OR k.expires_at > $2)
  AND m.status IN ('approved', 'suspended');

-- name: retire_current_api_key
-- Rotation: the current key keeps working until $2 (the end of its grace period). Only the
-- key presenting the rotation ($3) may do it: a key already retiring cannot.
UPDATE merchant_api_keys
SET expires_at = $2
WHERE merchant_id = $1 AND id = $3 AND expires_at IS NULL
RETURNING id;

-- name: retire_current_api_keys
UPDATE merchant_api_keys
SET expires_at = $2
WHERE merchant_id = $1 AND expires_at IS NULL;

-- --- payment requests ---------------------------------------------------------------------

-- name: merchant_for_request
-- A shared lock: payment requests of one merchant do not wait for each other, and a
-- suspension (FOR UPDATE) waits for those being made, or is seen by those that follow.
SELECT status, name, province_code FROM merchants WHERE id = $1 FOR SHARE;

-- name: insert_payment_request
INSERT INTO payment_requests (
    id, merchant_id, amount, reference, item_category, qr_payload, created_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8);

-- name: payment_request_of_merchant
SELECT * FROM payment_requests WHERE id = $1 AND merchant_id = $2;

-- name: cancel_payment_request
-- open and not expired ($3 = now) -> cancelled. The payment path marks a request paid under
-- the same condition, so of a cancel and a payment racing, exactly one wins.
UPDATE payment_requests
SET status = 'cancelled', cancelled_at = $3
WHERE id = $1 AND merchant_id = $2 AND status = 'open' AND expires_at > $3
RETURNING *;

-- name: payable_payment_request
-- For the payment path (merchant_api.payment_requests.load_payable): the request and what
-- the subsidy rules and the ledger need of its merchant.
SELECT r.id, r.merchant_id, r.amount, r.reference, r.item_category, r.status, r.payment_id,
       r.qr_payload, r.created_at, r.expires_at,
       m.name AS merchant_name, m.status AS merchant_status, m.business_type, m.category,
       m.province_code, m.district_code,
       m.citizen_payable_account_id, m.state_payable_account_id
FROM payment_requests r
JOIN merchants m ON m.id = r.merchant_id
WHERE r.id = $1;

-- --- payments (read side) -----------------------------------------------------------------

-- name: payment_of_merchant
SELECT * FROM payments WHERE id = $1 AND merchant_id = $2;

-- name: payment_position
SELECT created_at, id FROM payments WHERE id = $1 AND merchant_id = $2;

-- name: list_payments_of_merchant
-- Newest first; ($2, $3) is the position of the cursor's payment (or NULLs: from the start).
SELECT * FROM payments
WHERE merchant_id = $1
  AND ($2::timestamptz IS NULL OR (created_at, id) < ($2::timestamptz, $3::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $4;
