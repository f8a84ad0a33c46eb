-- Named queries of wallet/movements.py: a wallet's balance and its ledger transfers.

-- name: wallet_balance
SELECT debits_pending, debits_posted, credits_pending, credits_posted
FROM ledger_accounts
WHERE id = $1;

-- name: movement_position
SELECT batch_id, batch_index
FROM ledger_transfers
WHERE id = $1 AND (debit_account_id = $2 OR credit_account_id = $2);

-- name: list_movements
-- $1 wallet account, $2 citizen, ($3, $4) the cursor's (batch_id, batch_index), $5 limit.
-- Each side walks its own partial index (ledger_transfers_debit_history / _credit_history:
-- a wallet keeps history, migration 0012); the history conditions are those indexes' own.
-- Shown: not a void (8), and not a pending transfer (2) that has been resolved.
WITH shown AS (
    (SELECT t.* FROM ledger_transfers t
     WHERE t.debit_account_id = $1 AND t.debit_history IS NOT FALSE
       AND (t.batch_id, t.batch_index) < ($3::bigint, $4::integer)
       AND (t.flags & 8) = 0
       AND ((t.flags & 2) = 0
            OR NOT EXISTS (SELECT 1 FROM ledger_pending_resolutions r WHERE r.pending_id = t.id))
     ORDER BY t.batch_id DESC, t.batch_index DESC
     LIMIT $5)
    UNION ALL
    (SELECT t.* FROM ledger_transfers t
     WHERE t.credit_account_id = $1 AND t.credit_history IS NOT FALSE
       AND (t.batch_id, t.batch_index) < ($3::bigint, $4::integer)
       AND (t.flags & 8) = 0
       AND ((t.flags & 2) = 0
            OR NOT EXISTS (SELECT 1 FROM ledger_pending_resolutions r WHERE r.pending_id = t.id))
     ORDER BY t.batch_id DESC, t.batch_index DESC
     LIMIT $5)
)
SELECT s.id, s.debit_account_id, s.credit_account_id, s.amount, s.code, s.flags,
       s.created_at, tp.bank_reference, p.id AS payment_id
FROM shown s
LEFT JOIN topups tp ON tp.id = s.id
LEFT JOIN payments p ON p.id = s.user_data_128 AND p.citizen_id = $2
ORDER BY s.batch_id DESC, s.batch_index DESC
LIMIT $5;

-- name: get_movement
SELECT t.id, t.debit_account_id, t.credit_account_id, t.amount, t.code, t.flags,
       t.created_at, tp.bank_reference, p.id AS payment_id
FROM ledger_transfers t
LEFT JOIN topups tp ON tp.id = t.id
LEFT JOIN payments p ON p.id = t.user_data_128 AND p.citizen_id = $3
WHERE t.id = $1
  AND (t.debit_account_id = $2 OR t.credit_account_id = $2)
  AND (t.flags & 8) = 0
  AND ((t.flags & 2) = 0
       OR NOT EXISTS (SELECT 1 FROM ledger_pending_resolutions r WHERE r.pending_id = t.id));

-- name: citizen_payment
SELECT id, merchant_id, program_id, amount, subsidy_amount, citizen_amount,
       refunded_amount, created_at
FROM payments
WHERE id = $1 AND citizen_id = $2;
