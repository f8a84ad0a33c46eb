-- 0011: room on each page of ledger_accounts for the next version of its rows.
--
-- Every transfer rewrites two account rows. With the default fillfactor (100) a page has no
-- room for the new version, so about half of the updates were not HOT (measured on a
-- benchmark of 1.2 M accounts: 1.24 M HOT of 2.41 M updates): each of those writes the new
-- version on another page and a new entry in the primary key, and leaves the table to bloat.
-- At 70 % the new version fits beside the old one and the page prunes itself. Takes effect
-- for pages written from now on (a new database, or after VACUUM FULL / pg_repack).
ALTER TABLE ledger_accounts SET (fillfactor = 70);
