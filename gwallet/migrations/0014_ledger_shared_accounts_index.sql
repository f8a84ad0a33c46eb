-- 0014: the shared accounts (program budgets, merchants' payables) by id, for the engine to
-- read at start, a page at a time (ledger_core/queries.sql: page_shared_accounts). Partial:
-- citizens' wallets, the bulk of the table, are not in it. Shared accounts are few and made
-- rarely; their totals change all the time, but no indexed column does (updates stay HOT).
CREATE INDEX ledger_accounts_shared_id ON ledger_accounts (id) WHERE shared;
