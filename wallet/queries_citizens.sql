-- Named queries of wallet/identity.py and wallet/auth.py.

-- name: citizen_by_national_id
-- $1: the national ID's digest under every configured lookup key.
SELECT id FROM citizens WHERE national_id_digest = ANY($1::bytea[]);

-- name: insert_citizen
-- Of concurrent registrations of one national ID exactly one inserts; the others get no row.
INSERT INTO citizens (
    id, national_id_digest, national_id_digest_key_id, national_id_encrypted,
    phone_encrypted, full_name_encrypted, birth_date, province_code, district_code,
    wallet_account_id, pin_key_id, pin_hash, totp_secret_encrypted
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (national_id_digest) DO NOTHING
RETURNING id;

-- name: citizen_identity
SELECT national_id_encrypted, phone_encrypted, full_name_encrypted, birth_date,
       province_code, district_code, wallet_account_id, totp_confirmed_at, created_at
FROM citizens
WHERE id = $1;

-- name: citizen_profile
SELECT birth_date, nationality, province_code, district_code, taxpayer, wallet_account_id
FROM citizens
WHERE id = $1;

-- name: citizens_to_rekey
SELECT id, national_id_digest_key_id, national_id_encrypted, phone_encrypted,
       full_name_encrypted, totp_secret_encrypted
FROM citizens
WHERE id > $1
ORDER BY id
LIMIT $2;

-- name: rekey_citizen
-- Only if the row still holds the ciphertexts that were read.
UPDATE citizens
SET national_id_digest = $3, national_id_digest_key_id = $4, national_id_encrypted = $5,
    phone_encrypted = $6, full_name_encrypted = $7, totp_secret_encrypted = $8
WHERE id = $1 AND national_id_encrypted = $2;

-- name: lock_credentials
-- Every attempt locks the row: concurrent attempts of one citizen are counted one by one.
SELECT pin_key_id, pin_hash, totp_secret_encrypted, totp_last_step, totp_confirmed_at,
       failed_attempts, locked_until
FROM citizens
WHERE id = $1
FOR UPDATE;

-- name: record_failure
-- $2: the new count of consecutive failures; $3: the end of the lock it caused, or NULL.
UPDATE citizens SET failed_attempts = $2, locked_until = $3 WHERE id = $1;

-- name: record_success
-- $2: the TOTP step accepted (NULL: none); $3, $4: the PIN re-hashed under the current
-- pepper (NULL: unchanged); $5: when the authenticator was confirmed (NULL: unchanged).
UPDATE citizens
SET failed_attempts = 0,
    locked_until = NULL,
    totp_last_step = coalesce($2::bigint, totp_last_step),
    pin_key_id = coalesce($3::text, pin_key_id),
    pin_hash = coalesce($4::bytea, pin_hash),
    totp_confirmed_at = coalesce(totp_confirmed_at, $5::timestamptz)
WHERE id = $1;

-- name: insert_session
INSERT INTO citizen_sessions (id, citizen_id, token_hash, created_at, expires_at)
VALUES ($1, $2, $3, $4, $5);

-- name: end_sessions_beyond
-- Keep the newest $3 active sessions of the citizen; end the others.
UPDATE citizen_sessions
SET ended_at = $2
WHERE id IN (
    SELECT id FROM citizen_sessions
    WHERE citizen_id = $1 AND ended_at IS NULL AND expires_at > $2
    ORDER BY created_at DESC, id DESC
    OFFSET $3
);

-- name: session_by_token
SELECT s.id, s.citizen_id, c.wallet_account_id
FROM citizen_sessions s
JOIN citizens c ON c.id = s.citizen_id
WHERE s.token_hash = $1 AND s.ended_at IS NULL AND s.expires_at > $2;

-- name: end_session
UPDATE citizen_sessions
SET ended_at = $3
WHERE id = $1 AND citizen_id = $2 AND ended_at IS NULL AND expires_at > $3
RETURNING id;

-- name: session_position
SELECT created_at, id FROM citizen_sessions WHERE id = $1 AND citizen_id = $2;

-- name: list_sessions
-- Active sessions, newest first, after the cursor ($3, $4) = (created_at, id).
SELECT id, created_at, expires_at
FROM citizen_sessions
WHERE citizen_id = $1 AND ended_at IS NULL AND expires_at > $2
  AND (created_at, id) < ($3::timestamptz, $4::uuid)
ORDER BY created_at DESC, id DESC
LIMIT $5;

-- name: purge_sessions
-- Sessions that expired or ended before $1; at most $2 rows per statement.
DELETE FROM citizen_sessions
WHERE id IN (
    SELECT id FROM citizen_sessions
    WHERE expires_at < $1 OR ended_at < $1
    LIMIT $2
);

-- name: totp_state
SELECT totp_confirmed_at FROM citizens WHERE id = $1;
