-- Named queries of gwallet/officials.py and gwallet/audit.py (tables of migration 0004).

-- --- officials -----------------------------------------------------------------------------

-- name: insert_official
INSERT INTO officials (id, username, role, password_hash, totp_secret, created_by)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (username) DO NOTHING
RETURNING id, username, role, disabled, created_at;

-- name: official_for_login
SELECT id, username, role, password_hash, totp_secret, disabled, locked_until
FROM officials
WHERE username = $1;

-- name: official_by_username
SELECT id, username, role, totp_secret FROM officials WHERE username = $1;

-- name: official_totp
SELECT totp_secret FROM officials WHERE id = $1;

-- name: accept_totp_step
-- A code is accepted once only: the step must be later than the last one accepted. Under
-- the row lock, so two requests with the same code cannot both pass.
UPDATE officials SET totp_last_step = $2
WHERE id = $1 AND NOT disabled AND (totp_last_step IS NULL OR totp_last_step < $2)
RETURNING id;

-- name: accept_login
-- The login's TOTP step, once only, and only while the account is not locked; resets the
-- count of consecutive failures.
UPDATE officials
SET totp_last_step = $2, failed_logins = 0, locked_until = NULL
WHERE id = $1
  AND NOT disabled
  AND (locked_until IS NULL OR locked_until <= $3)
  AND (totp_last_step IS NULL OR totp_last_step < $2)
RETURNING id;

-- name: count_login_failure
-- One more consecutive failure; the $2-th locks the account until $3 and starts a new count.
-- A failure while locked ($4 = false) is not counted, so the lock is not prolonged by it.
UPDATE officials
SET failed_logins = CASE
        WHEN NOT $4 THEN failed_logins
        WHEN failed_logins + 1 >= $2 THEN 0
        ELSE failed_logins + 1 END,
    locked_until = CASE
        WHEN $4 AND failed_logins + 1 >= $2 THEN $3
        ELSE locked_until END
WHERE id = $1
RETURNING failed_logins, locked_until;

-- name: list_officials
SELECT id, username, role, disabled, created_at
FROM officials
WHERE $1::uuid IS NULL OR id > $1
ORDER BY id
LIMIT $2;

-- --- sessions ------------------------------------------------------------------------------

-- name: insert_session
INSERT INTO official_sessions (token_hash, official_id, created_at, expires_at)
VALUES ($1, $2, $3, $4);

-- name: session_principal
SELECT o.id, o.username, o.role, s.expires_at
FROM official_sessions s
JOIN officials o ON o.id = s.official_id
WHERE s.token_hash = $1 AND s.expires_at > $2 AND NOT o.disabled;

-- name: delete_session
DELETE FROM official_sessions WHERE token_hash = $1;

-- name: purge_expired_sessions
DELETE FROM official_sessions
WHERE token_hash IN (
    SELECT token_hash FROM official_sessions WHERE expires_at < $1 LIMIT $2
);

-- --- the audit log -------------------------------------------------------------------------

-- name: lock_audit_head
SELECT seq, hash FROM audit_chain_head WHERE singleton FOR UPDATE;

-- name: read_audit_head
SELECT seq, hash FROM audit_chain_head WHERE singleton;

-- name: advance_audit_head
UPDATE audit_chain_head SET seq = $1, hash = $2 WHERE singleton;

-- name: insert_audit_entry
INSERT INTO audit_log (seq, id, occurred_at, actor_id, actor, action, target_type, target_id,
                       before, after, prev_hash, hash)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10::jsonb, $11, $12);

-- name: list_audit_entries
SELECT seq, id, occurred_at, actor_id, actor, action, target_type, target_id,
       before::text AS before, after::text AS after, prev_hash, hash
FROM audit_log
WHERE seq > $1
  AND ($3::text IS NULL OR target_id = $3)
  AND ($4::text IS NULL OR action = $4)
ORDER BY seq
LIMIT $2;

-- name: audit_seq_of
SELECT seq FROM audit_log WHERE id = $1;

-- name: audit_page
SELECT seq, id, occurred_at, actor_id, actor, action, target_type, target_id,
       before::text AS before, after::text AS after, prev_hash, hash
FROM audit_log
WHERE seq > $1
ORDER BY seq
LIMIT $2;
