-- 0013: a citizen's wallet keeps its history whoever creates it.
--
-- `gwallet serve` migrates at startup, so while a release with 0012 rolls out, processes of
-- the previous release (which know no `history` flag) may still register citizens: their
-- wallets would get the column's default, false, for good (the flag is fixed at creation),
-- and their movements would never be listed. This trigger gives every wallet (account code
-- 200, wallet/accounts.py) history = true on insert. 0012 and 0013 ship in the same release,
-- so no wallet was made between them; the UPDATE below is for any database that ran 0012
-- alone (development ones).

CREATE FUNCTION ledger_wallet_keeps_history() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.history := true;
    RETURN NEW;
END
$$;

CREATE TRIGGER ledger_accounts_wallet_history BEFORE INSERT ON ledger_accounts
    FOR EACH ROW WHEN (NEW.code = 200 AND NOT NEW.history)
    EXECUTE FUNCTION ledger_wallet_keeps_history();

UPDATE ledger_accounts SET history = true WHERE code = 200 AND NOT history;
