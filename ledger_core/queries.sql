-- Named queries of the ledger core (see ledger_core/sql.py). Arrays are passed whole so
-- that a batch costs one round trip per statement, whatever its size.

-- name: lookup_transfers
-- Committed transfers and failed ids among the given ids.
SELECT u.id AS requested_id, t.id, t.debit_account_id, t.credit_account_id, t.amount, t.ledger,
       t.code, t.flags, t.pending_id, t.timeout_seconds, t.user_data_128, t.user_data_64,
       t.user_data_32, t.batch_id, t.batch_index, t.created_at, t.expires_at,
       f.result AS failed_result
FROM unnest($1::uuid[]) AS u (id)
LEFT JOIN ledger_transfers t ON t.id = u.id
LEFT JOIN ledger_failed_transfers f ON f.id = u.id
WHERE t.id IS NOT NULL OR f.id IS NOT NULL

-- name: lock_accounts
-- Locks the batch's accounts that are not shared, in sorted id order. Every batch of every
-- process locks in the same global order (unshared by id, then shared by id, then the chain
-- head), so none can deadlock another. The ctid (where the locked row version is) lets the
-- batch's update reach each row without a second descent of the primary key.
SELECT id, ledger, code, debits_must_not_exceed_credits, credits_must_not_exceed_debits, closed,
       debits_pending, debits_posted, credits_pending, credits_posted, shared, history, ctid
FROM ledger_accounts
WHERE id = ANY($1::uuid[]) AND NOT shared
ORDER BY id
FOR UPDATE

-- name: lock_accounts_skip_locked
-- The same, passing over rows another transaction holds (a batch of another process): the
-- engine defers the submissions that need them to a later batch instead of waiting for that
-- batch to commit. It never waits, so it cannot deadlock.
SELECT id, ledger, code, debits_must_not_exceed_credits, credits_must_not_exceed_debits, closed,
       debits_pending, debits_posted, credits_pending, credits_posted, shared, history, ctid
FROM ledger_accounts
WHERE id = ANY($1::uuid[]) AND NOT shared
ORDER BY id
FOR UPDATE SKIP LOCKED

-- name: read_unlocked_accounts
-- The batch's accounts that the locking read did not return, as they are now, without a
-- lock: the shared ones (the engine checks them later), and unshared ones another
-- transaction holds (lock_accounts_skip_locked passed over them).
SELECT id, ledger, code, debits_must_not_exceed_credits, credits_must_not_exceed_debits, closed,
       debits_pending, debits_posted, credits_pending, credits_posted, shared, history
FROM ledger_accounts
WHERE id = ANY($1::uuid[])

-- name: lock_shared_accounts
-- The shared accounts of a batch, locked last (sorted), with the ctid of the locked row.
SELECT id, ledger, code, debits_must_not_exceed_credits, credits_must_not_exceed_debits, closed,
       debits_pending, debits_posted, credits_pending, credits_posted, shared, history, ctid
FROM ledger_accounts
WHERE id = ANY($1::uuid[])
ORDER BY id
FOR UPDATE

-- name: lock_shared_totals
-- The shared accounts a decision depends on, locked last (sorted): what the check of the
-- decision and the update need, nothing more (a batch has thousands of them).
SELECT id, closed, debits_pending, debits_posted, credits_pending, credits_posted, ctid
FROM ledger_accounts
WHERE id = ANY($1::uuid[])
ORDER BY id
FOR UPDATE

-- name: page_shared_accounts
-- A page of the shared accounts, in id order after $1 (the engine reads them at start: their
-- ledger, code and flags never change). By the partial index of migration 0014.
SELECT id, ledger, code, debits_must_not_exceed_credits, credits_must_not_exceed_debits, closed,
       debits_pending, debits_posted, credits_pending, credits_posted, shared, history
FROM ledger_accounts
WHERE shared AND id > $1
ORDER BY id
LIMIT $2

-- name: pending_resolutions
SELECT pending_id, status FROM ledger_pending_resolutions WHERE pending_id = ANY($1::uuid[])

-- name: update_locked_account_totals
-- The accounts this transaction has locked (lock_accounts), by the ctid of the locked row:
-- no other transaction can update a row we hold, so it is still there; a TID scan instead of
-- an index scan per account (BENCHMARKS.md). The id must match too: the engine checks that
-- every row was updated.
UPDATE ledger_accounts AS a
SET debits_pending = u.debits_pending,
    debits_posted = u.debits_posted,
    credits_pending = u.credits_pending,
    credits_posted = u.credits_posted
FROM unnest($1::tid[], $2::uuid[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
     AS u (ctid, id, debits_pending, debits_posted, credits_pending, credits_posted)
WHERE a.ctid = u.ctid AND a.id = u.id

-- (Transfers are inserted with COPY by the engine: see TRANSFER_COLUMNS in engine.py.)

-- name: insert_failed_transfers
INSERT INTO ledger_failed_transfers (id, result, failed_at)
SELECT u.id, u.result, $3::timestamptz FROM unnest($1::uuid[], $2::smallint[]) AS u (id, result)
ON CONFLICT (id) DO NOTHING

-- name: insert_pending_resolutions
INSERT INTO ledger_pending_resolutions (pending_id, status, transfer_id, batch_id, resolved_at)
SELECT u.pending_id, u.status, u.transfer_id, $4::bigint, $5::timestamptz
FROM unnest($1::uuid[], $2::smallint[], $3::uuid[]) AS u (pending_id, status, transfer_id)

-- name: insert_pending_expiries
INSERT INTO ledger_pending_expiries (pending_id, expires_at)
SELECT * FROM unnest($1::uuid[], $2::timestamptz[])

-- name: delete_pending_expiries
DELETE FROM ledger_pending_expiries WHERE pending_id = ANY($1::uuid[])

-- name: due_pending_expiries
SELECT pending_id FROM ledger_pending_expiries WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2

-- name: next_batch_id
SELECT nextval('ledger_batch_id_seq')

-- name: chain_append
SELECT seq, link FROM ledger_chain_append($1, $2, $3, $4, $5)

-- name: insert_checkpoint
INSERT INTO ledger_checkpoints (seq, link, public_key, signature) VALUES ($1, $2, $3, $4)

-- name: insert_accounts
INSERT INTO ledger_accounts (
    id, ledger, code, debits_must_not_exceed_credits, credits_must_not_exceed_debits,
    user_data_128, user_data_64, user_data_32, shared, history)
SELECT * FROM unnest($1::uuid[], $2::integer[], $3::integer[], $4::boolean[], $5::boolean[],
                     $6::uuid[], $7::bigint[], $8::integer[], $9::boolean[], $10::boolean[])
ON CONFLICT (id) DO NOTHING
RETURNING id

-- name: lookup_accounts
SELECT id, ledger, code, debits_must_not_exceed_credits, credits_must_not_exceed_debits, closed,
       shared, history, debits_pending, debits_posted, credits_pending, credits_posted,
       user_data_128, user_data_64, user_data_32
FROM ledger_accounts
WHERE id = ANY($1::uuid[])

-- name: close_account
UPDATE ledger_accounts SET closed = true WHERE id = $1 AND NOT closed RETURNING id

-- name: lookup_transfer
SELECT id, debit_account_id, credit_account_id, amount, ledger, code, flags, pending_id,
       timeout_seconds, user_data_128, user_data_64, user_data_32, batch_id, batch_index,
       created_at, expires_at
FROM ledger_transfers
WHERE id = $1

-- name: verify_ledgers_balanced
-- Per ledger, debits equal credits, posted and pending.
SELECT ledger,
       sum(debits_posted) - sum(credits_posted) AS posted_difference,
       sum(debits_pending) - sum(credits_pending) AS pending_difference
FROM ledger_accounts
GROUP BY ledger
HAVING sum(debits_posted) <> sum(credits_posted) OR sum(debits_pending) <> sum(credits_pending)

-- name: verify_account_totals
-- Every account's totals equal the sums of its transfers: posted = regular transfers and
-- posts; pending = pending transfers not yet resolved.
WITH moves AS (
    SELECT t.debit_account_id AS account_id, t.credit_account_id AS other_id, t.amount,
           t.flags, r.pending_id IS NOT NULL AS resolved
    FROM ledger_transfers t
    LEFT JOIN ledger_pending_resolutions r ON r.pending_id = t.id
), sums AS (
    SELECT account_id,
           sum(CASE WHEN side = 'debit' AND (flags & 2) <> 0 AND NOT resolved THEN amount ELSE 0 END) AS debits_pending,
           sum(CASE WHEN side = 'debit' AND (flags & 10) = 0 THEN amount ELSE 0 END) AS debits_posted,
           sum(CASE WHEN side = 'credit' AND (flags & 2) <> 0 AND NOT resolved THEN amount ELSE 0 END) AS credits_pending,
           sum(CASE WHEN side = 'credit' AND (flags & 10) = 0 THEN amount ELSE 0 END) AS credits_posted
    FROM (
        SELECT account_id, amount, flags, resolved, 'debit' AS side FROM moves
        UNION ALL
        SELECT other_id, amount, flags, resolved, 'credit' FROM moves
    ) AS sided
    GROUP BY account_id
)
SELECT a.id, a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted,
       coalesce(s.debits_pending, 0) AS expected_debits_pending,
       coalesce(s.debits_posted, 0) AS expected_debits_posted,
       coalesce(s.credits_pending, 0) AS expected_credits_pending,
       coalesce(s.credits_posted, 0) AS expected_credits_posted
FROM ledger_accounts a
LEFT JOIN sums s ON s.account_id = a.id
WHERE a.debits_pending <> coalesce(s.debits_pending, 0)
   OR a.debits_posted <> coalesce(s.debits_posted, 0)
   OR a.credits_pending <> coalesce(s.credits_pending, 0)
   OR a.credits_posted <> coalesce(s.credits_posted, 0)
ORDER BY a.id
LIMIT $1

-- name: verify_limit_flags
SELECT id FROM ledger_accounts
WHERE (debits_must_not_exceed_credits AND debits_pending + debits_posted > credits_posted)
   OR (credits_must_not_exceed_debits AND credits_pending + credits_posted > debits_posted)
ORDER BY id
LIMIT $1

-- name: verify_resolutions
-- Posts and voids each resolve exactly their pending transfer, and only pendings resolve.
SELECT 'resolution_of_a_non_pending_transfer' AS problem, r.pending_id AS id
FROM ledger_pending_resolutions r JOIN ledger_transfers p ON p.id = r.pending_id
WHERE (p.flags & 2) = 0
UNION ALL
SELECT 'post_or_void_without_resolution', t.id
FROM ledger_transfers t
LEFT JOIN ledger_pending_resolutions r ON r.pending_id = t.pending_id AND r.transfer_id = t.id
WHERE (t.flags & 12) <> 0 AND r.pending_id IS NULL
LIMIT $1

-- name: verify_transfer_accounts
-- Every transfer names two accounts that exist (the engine locked them when it wrote it).
SELECT t.id FROM ledger_transfers t
WHERE NOT EXISTS (SELECT 1 FROM ledger_accounts a WHERE a.id = t.debit_account_id)
   OR NOT EXISTS (SELECT 1 FROM ledger_accounts a WHERE a.id = t.credit_account_id)
LIMIT $1

-- name: verify_chain_page
SELECT seq, batch_id, transfer_count, expiry_count, prev_link, link, created_at
FROM ledger_chain
WHERE seq > $1
ORDER BY seq
LIMIT $2

-- name: verify_batch_transfers
SELECT id, debit_account_id, credit_account_id, amount, ledger, code, flags, pending_id,
       timeout_seconds, user_data_128, user_data_64, user_data_32, batch_id, batch_index,
       created_at, expires_at
FROM ledger_transfers
WHERE batch_id = ANY($1::bigint[])
ORDER BY batch_id, batch_index

-- name: verify_batch_expiries
SELECT batch_id, pending_id FROM ledger_pending_resolutions
WHERE status = 3 AND batch_id = ANY($1::bigint[])

-- name: verify_unchained_transfers
SELECT count(*) FROM ledger_transfers t
WHERE NOT EXISTS (SELECT 1 FROM ledger_chain c WHERE c.batch_id = t.batch_id)

-- name: verify_chain_head
SELECT seq, link FROM ledger_chain_head

-- name: verify_checkpoints
SELECT k.seq, k.link, k.public_key, k.signature, c.link AS chain_link
FROM ledger_checkpoints k LEFT JOIN ledger_chain c ON c.seq = k.seq
ORDER BY k.seq

-- name: verify_counts
SELECT (SELECT count(*) FROM ledger_accounts) AS accounts,
       (SELECT count(*) FROM ledger_transfers) AS transfers
