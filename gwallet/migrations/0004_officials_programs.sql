-- 0004: the officials' back office (issue 3): officials and their sessions, subsidy programs
-- and their versions, funding requests, the hash-chained audit log, and the treasury account.
--
-- Lock order of every transaction here (so none can deadlock with another or with a ledger
-- batch): programs row -> officials row (a TOTP step) -> ledger account inserts ->
-- audit_chain_head (always last). A ledger batch that carries a funding approval updates the
-- funding request and takes the audit head as an effect, before its shared accounts and the
-- ledger chain head, and never takes a programs or officials row lock.

-- --- officials -----------------------------------------------------------------------------

CREATE TABLE officials (
    id uuid PRIMARY KEY,
    username text NOT NULL UNIQUE CHECK (username ~ '^[a-z][a-z0-9._-]{2,63}$'),
    role text NOT NULL CHECK (role IN ('admin', 'maker', 'checker', 'auditor')),
    password_hash text NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    totp_secret text NOT NULL CHECK (totp_secret ~ '^[A-Z2-7]{16,128}$'),
    -- The last TOTP time step accepted (login or step-up): a code is accepted once only.
    totp_last_step bigint,
    -- Consecutive failed logins; at the limit the account is locked until locked_until.
    failed_logins integer NOT NULL DEFAULT 0 CHECK (failed_logins >= 0),
    locked_until timestamptz,
    disabled boolean NOT NULL DEFAULT false,
    created_by uuid REFERENCES officials (id), -- NULL: created with the command line
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Bearer tokens (ost_...) are random; only their SHA-256 is stored.
CREATE TABLE official_sessions (
    token_hash bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    official_id uuid NOT NULL REFERENCES officials (id),
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    CHECK (expires_at > created_at)
);
CREATE INDEX official_sessions_official ON official_sessions (official_id);
CREATE INDEX official_sessions_expires_at ON official_sessions (expires_at);

-- --- programs ------------------------------------------------------------------------------

-- A program's lifecycle: draft -> submitted -> approved -> active <-> paused -> closed.
-- Before its first approval a program's status follows its latest version; afterwards new
-- versions go through draft -> submitted -> approved on their own while the program stays
-- approved, active or paused, and the version in force at a moment is `program_version_at`.
CREATE TABLE programs (
    id uuid PRIMARY KEY,
    code text NOT NULL UNIQUE, -- spec.code; fixed at creation (programs exclude each other by code)
    kind text NOT NULL,
    status text NOT NULL
        CHECK (status IN ('draft', 'submitted', 'approved', 'active', 'paused', 'closed')),
    latest_version integer NOT NULL CHECK (latest_version >= 1),
    -- The budget account (ledger code 101), created at the first approval.
    budget_account_id uuid UNIQUE,
    created_by uuid NOT NULL REFERENCES officials (id),
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    CONSTRAINT programs_budget_after_approval
        CHECK ((budget_account_id IS NULL) = (status IN ('draft', 'submitted')))
);

-- Every version ever made; a version's spec never changes (an edit makes a new version).
CREATE TABLE program_versions (
    program_id uuid NOT NULL REFERENCES programs (id),
    version integer NOT NULL CHECK (version >= 1),
    spec jsonb NOT NULL, -- subsidy_rules.spec.ProgramSpec; decode with spec_from_builtins
    content_hash text NOT NULL CHECK (content_hash ~ '^[0-9a-f]{64}$'),
    status text NOT NULL CHECK (status IN ('draft', 'submitted', 'approved', 'superseded')),
    -- When an approved version takes effect; stated by the maker (NULL: at approval) and
    -- fixed at approval to the later of that and the approval time.
    effective_at timestamptz,
    created_by uuid NOT NULL REFERENCES officials (id),
    created_at timestamptz NOT NULL,
    submitted_by uuid REFERENCES officials (id),
    submitted_at timestamptz,
    approved_by uuid REFERENCES officials (id),
    approved_at timestamptz,
    PRIMARY KEY (program_id, version),
    -- Maker-checker, a second time: nobody approves a version they made.
    CONSTRAINT program_versions_four_eyes CHECK (approved_by IS NULL OR approved_by <> created_by),
    CONSTRAINT program_versions_approved
        CHECK ((status = 'approved') = (approved_by IS NOT NULL AND approved_at IS NOT NULL
                                        AND effective_at IS NOT NULL)),
    CONSTRAINT program_versions_submitted
        CHECK (status = 'draft' OR status = 'superseded' OR submitted_at IS NOT NULL)
);

-- Budget moves from the treasury into a program by request (maker) and approval (checker).
CREATE TABLE program_funding_requests (
    id uuid PRIMARY KEY,
    program_id uuid NOT NULL REFERENCES programs (id),
    amount bigint NOT NULL CHECK (amount > 0 AND amount <= 1000000000000000),
    status text NOT NULL CHECK (status IN ('requested', 'approved')),
    requested_by uuid NOT NULL REFERENCES officials (id),
    requested_at timestamptz NOT NULL,
    approved_by uuid REFERENCES officials (id),
    approved_at timestamptz,
    -- The ledger transfer treasury -> budget; its id is derived from this request's id.
    transfer_id uuid NOT NULL UNIQUE,
    CONSTRAINT program_funding_four_eyes CHECK (approved_by IS NULL OR approved_by <> requested_by),
    CONSTRAINT program_funding_approved
        CHECK ((status = 'approved') = (approved_by IS NOT NULL AND approved_at IS NOT NULL))
);
CREATE INDEX program_funding_requests_program ON program_funding_requests (program_id, id);

-- The treasury (ledger 764, code 100): the source of public money; no limit flag, so its
-- balance is minus everything it has funded. Its id is the constant TREASURY_ACCOUNT_ID of
-- subsidy_rules/service.py (a test checks that they agree).
INSERT INTO ledger_accounts (id, ledger, code, shared)
VALUES ('7e3a5d10-0000-4000-8000-000000000764', 764, 100, true);

-- --- the audit log -------------------------------------------------------------------------

-- Every official action, hash-chained like the ledger: hash = sha256(prev_hash || canonical
-- row bytes) (gwallet/audit.py). Appended under the row lock of audit_chain_head, in the
-- transaction of the action itself.
CREATE TABLE audit_log (
    seq bigint PRIMARY KEY CHECK (seq > 0),
    id uuid NOT NULL UNIQUE,
    occurred_at timestamptz NOT NULL,
    actor_id uuid, -- the official; NULL for the command line or an unknown username
    actor text NOT NULL CHECK (length(actor) BETWEEN 1 AND 100), -- username, or "cli"
    action text NOT NULL CHECK (action ~ '^[a-z][a-z_.]{1,63}$'),
    target_type text NOT NULL CHECK (length(target_type) BETWEEN 1 AND 40),
    target_id text, -- public id (prg_..., off_..., fnd_...)
    before jsonb,
    after jsonb,
    prev_hash bytea NOT NULL CHECK (length(prev_hash) = 32),
    hash bytea NOT NULL CHECK (length(hash) = 32)
);
CREATE INDEX audit_log_target ON audit_log (target_id, seq) WHERE target_id IS NOT NULL;

CREATE TABLE audit_chain_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq bigint NOT NULL,
    hash bytea NOT NULL CHECK (length(hash) = 32)
);
INSERT INTO audit_chain_head (singleton, seq, hash)
VALUES (true, 0, decode(repeat('00', 32), 'hex'));

CREATE FUNCTION audit_forbid_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is immutable: % on % is not allowed', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE TRIGGER audit_log_immutable BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_forbid_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_forbid_change();
CREATE TRIGGER audit_chain_head_no_delete BEFORE DELETE ON audit_chain_head
    FOR EACH ROW EXECUTE FUNCTION audit_forbid_change();
CREATE TRIGGER program_versions_no_delete BEFORE DELETE ON program_versions
    FOR EACH ROW EXECUTE FUNCTION audit_forbid_change();
-- A version's content never changes: only its status and approval fields are ever updated.
CREATE TRIGGER program_versions_content_immutable BEFORE UPDATE ON program_versions
    FOR EACH ROW
    WHEN (OLD.spec IS DISTINCT FROM NEW.spec
          OR OLD.content_hash IS DISTINCT FROM NEW.content_hash
          OR OLD.created_by IS DISTINCT FROM NEW.created_by
          OR OLD.version IS DISTINCT FROM NEW.version
          OR OLD.program_id IS DISTINCT FROM NEW.program_id)
    EXECUTE FUNCTION audit_forbid_change();
