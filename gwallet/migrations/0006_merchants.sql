-- 0006: merchants (issue 5): onboarding, API keys, payment requests (dynamic QR).
-- See merchant_api/__init__.py for the design.
--
-- A merchant's two ledger accounts (code 300 citizen-share payable, 301 state-share payable,
-- both shared and never negative) are created when an official approves it. The owner's
-- national ID and the bank account are personal data: AES-GCM ciphertexts (gwallet/pii.py)
-- bound to the row and column, with an HMAC index of the owner's national ID (the same
-- purpose as citizens.national_id_digest, so an owner paying their own shop can be found).
CREATE TABLE merchants (
    id uuid PRIMARY KEY,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'approved', 'rejected', 'suspended')),
    name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    business_type text NOT NULL
        CHECK (business_type IN ('individual', 'juristic', 'cooperative', 'franchise')),
    category text NOT NULL CHECK (category ~ '^[a-z][a-z0-9_]{1,39}$'),
    province_code text NOT NULL CHECK (province_code ~ '^[0-9]{2}$'),
    district_code text NOT NULL
        CHECK (district_code ~ '^[0-9]{4}$' AND left(district_code, 2) = province_code),
    owner_national_id_enc bytea NOT NULL,
    owner_national_id_index bytea NOT NULL CHECK (length(owner_national_id_index) = 32),
    owner_national_id_index_key_id text NOT NULL,
    bank_code text NOT NULL CHECK (bank_code ~ '^[0-9]{3}$'),
    -- {"account_number", "account_name"} as JSON, encrypted.
    bank_account_enc bytea NOT NULL,
    citizen_payable_account_id uuid UNIQUE,
    state_payable_account_id uuid UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    approved_at timestamptz,
    suspended_at timestamptz,
    suspension_reason text CHECK (char_length(suspension_reason) BETWEEN 1 AND 500),
    CONSTRAINT merchants_accounts_once_approved CHECK (
        status IN ('pending', 'rejected')
        OR (citizen_payable_account_id IS NOT NULL AND state_payable_account_id IS NOT NULL
            AND approved_at IS NOT NULL)),
    CONSTRAINT merchants_suspension CHECK (
        (status = 'suspended') = (suspended_at IS NOT NULL AND suspension_reason IS NOT NULL))
);
CREATE INDEX merchants_owner ON merchants (owner_national_id_index);
CREATE INDEX merchants_status ON merchants (status, id);

-- API keys: shown once, stored as SHA-256 (a 256-bit random key needs no slow hash).
-- expires_at is NULL for the current key; rotation sets the old key's expiry to the end of
-- its grace period. At most one current key per merchant.
CREATE TABLE merchant_api_keys (
    id uuid PRIMARY KEY,
    merchant_id uuid NOT NULL REFERENCES merchants (id),
    key_hash bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    key_hint text NOT NULL CHECK (char_length(key_hint) BETWEEN 1 AND 16),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    CONSTRAINT merchant_api_keys_expiry CHECK (expires_at IS NULL OR expires_at >= created_at)
);
CREATE INDEX merchant_api_keys_merchant ON merchant_api_keys (merchant_id, created_at DESC);
CREATE UNIQUE INDEX merchant_api_keys_one_current
    ON merchant_api_keys (merchant_id) WHERE expires_at IS NULL;

-- Payment requests: one dynamic QR each, paid at most once (payments.payment_request_id is
-- UNIQUE too). 'expired' is not stored: a request is expired when now >= expires_at.
CREATE TABLE payment_requests (
    id uuid PRIMARY KEY,
    merchant_id uuid NOT NULL REFERENCES merchants (id),
    amount bigint NOT NULL CHECK (amount > 0 AND amount <= 1000000000000),
    reference text NOT NULL CHECK (char_length(reference) BETWEEN 1 AND 64),
    item_category text CHECK (item_category ~ '^[a-z][a-z0-9_]{1,39}$'),
    status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'paid', 'cancelled')),
    payment_id uuid UNIQUE,
    qr_payload text NOT NULL CHECK (octet_length(qr_payload) <= 512),
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    paid_at timestamptz,
    cancelled_at timestamptz,
    CONSTRAINT payment_requests_paid CHECK (
        (status = 'paid') = (payment_id IS NOT NULL AND paid_at IS NOT NULL)),
    CONSTRAINT payment_requests_cancelled CHECK ((status = 'cancelled') = (cancelled_at IS NOT NULL)),
    CONSTRAINT payment_requests_expiry CHECK (expires_at > created_at)
);
CREATE INDEX payment_requests_merchant ON payment_requests (merchant_id, created_at DESC, id);
