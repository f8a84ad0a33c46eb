"""wallet: citizens, their identity and authentication, top-ups, enrolment and paying.

Nouns: a **citizen** (registered once per national ID, checksum-validated; the ID, phone,
name and TOTP secret are stored AES-GCM encrypted, the ID also as a keyed hash for lookups:
``gwallet.pii``, docs/SECURITY.md), a **wallet** (a ledger account of the citizen's
own money, ``debits_must_not_exceed_credits``), a **session** (after PIN + TOTP), a **top-up**
(a bank partner's signed credit, idempotent on ``bank_reference``), an **enrolment** (first
come, first served within a program's quota), and a **payment** (a citizen paying a merchant's
payment request: the citizen's share and the subsidy share as one linked chain of transfers).

Invariants:
- every satang moves through ``ledger_core``: a payment is linked transfers whose ids are
  derived from the Idempotency-Key (``gwallet.idempotency.derive_uuid``), so a retried payment
  never moves money twice;
- a wallet never goes negative, and no cap or budget is exceeded even under concurrency
  (the ledger's limit flags and the rules of ``subsidy_rules`` decide, Postgres enforces);
- a dynamic payment request is paid at most once;
- PINs, TOTP secrets and national IDs never appear in logs or responses.

Layout (issue 4): ``identity`` (validation, registration, rekeying), ``auth`` (PINs, TOTP,
lockout, sessions, the ``CITIZEN`` guard), ``topups`` (signed bank credits), ``movements``
(balance and transactions), ``enrolment`` (first come, first served; forfeiture),
``accounts`` (ledger codes), ``context`` (keys and limits from settings, the lifespan),
``http`` (controllers), ``queries_*.sql``.

Imports: ``ledger_core`` and ``subsidy_rules``; never ``merchant_api`` internals (a payment
request is read through its narrow interface), and of ``gwallet`` only its cross-cutting
helpers (problems, request, idempotency, pagination, ids, totp, pii, settings), never
``gwallet.app`` (the composition root imports ``wallet``).
"""
