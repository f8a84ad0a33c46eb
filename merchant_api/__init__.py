"""merchant_api: merchants and what their point-of-sale systems call.

Nouns: a **merchant** (applies, is approved or suspended by an official), an **API key**
(``sk_live_...``, stored hashed, rotatable with a grace period), a **payment request**
(a dynamic EMVCo / Thai QR Payment payload with the amount and a CRC-16, single-use, expiring),
a **refund** (full or partial; the subsidy share goes back to the program and the citizen's
caps are restored by the same share), a **webhook endpoint** and its **events** (signed per
Standard Webhooks, retried with backoff, in order per merchant), and a **settlement** (T+1,
in two legs: the citizen share and the state share, each with its status).

Invariants:
- the QR codec is pure and round-trips: decode(encode(x)) == x, and a bad CRC is refused;
- a refund never returns more than was paid, across all refunds of a payment;
- a suspended merchant's unpaid state share is held, not settled;
- a settlement run for a business date is idempotent and balances to the ledger.

Imports: ``ledger_core`` and ``subsidy_rules`` (refunds undo a subsidy decision's share);
never ``wallet`` internals, and ``gwallet`` only for its cross-cutting HTTP helpers in the
controllers.
"""
