-- 0012: per-account transfer history only for the accounts that ask for it.
--
-- Like TigerBeetle's `history` account flag: an account created with history = true keeps
-- a listable history of its transfers (a citizen's wallet: GET /v1/citizen/transactions);
-- the others (program budgets, merchants' payables, clearing accounts) do not pay for it.
-- Before this, every transfer went into two per-account indexes at two random leaves, a
-- third of the batch's insert work; a payment touches one wallet but four accounts.
--
-- Each transfer records whether its debit and its credit account keep history; the two
-- partial indexes hold only those sides. Transfers written before this migration have NULL
-- in both and stay indexed on both sides (IS NOT FALSE), as they were: nothing is rewritten.

ALTER TABLE ledger_accounts ADD COLUMN history boolean NOT NULL DEFAULT false;
-- The citizens' wallets (account code 200, wallet/accounts.py) keep their history.
UPDATE ledger_accounts SET history = true WHERE code = 200 AND NOT history;

ALTER TABLE ledger_transfers ADD COLUMN debit_history boolean, ADD COLUMN credit_history boolean;

DROP INDEX ledger_transfers_debit_account;
DROP INDEX ledger_transfers_credit_account;
CREATE INDEX ledger_transfers_debit_history
    ON ledger_transfers (debit_account_id, batch_id DESC, batch_index DESC)
    WHERE debit_history IS NOT FALSE;
CREATE INDEX ledger_transfers_credit_history
    ON ledger_transfers (credit_account_id, batch_id DESC, batch_index DESC)
    WHERE credit_history IS NOT FALSE;
