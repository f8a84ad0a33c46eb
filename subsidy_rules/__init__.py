"""subsidy_rules: subsidy programs and the pure decision of how much the state pays.

Nouns: a **program** (a subsidy scheme such as half-half co-payment, with its budget account
in the ledger), a **program version** (an immutable spec: its kind's rule, caps in satang,
spending and registration windows in Asia/Bangkok, citizen and merchant eligibility,
excluded item categories, quota of enrolments, exclusions of other programs), an
**enrolment** (a citizen's right in one program), and a **subsidy decision** (for one
purchase: a split into subsidy and citizen amounts naming the rule that bounded it, or a
ranked refusal reason).

Invariants:
- the decision is a pure function of (program version, usage counters, purchase, now): no
  I/O, no clock, no randomness; table-driven tests cover every rule and every refusal;
- money is integer satang, rates are integer basis points, and rounding is written once
  (``decision.share_of``: the state's share rounds down, so the state never pays a fraction
  of a satang too much);
- subsidy + citizen share == amount; the subsidy is never negative and never passes a cap or
  the remaining budget; a cap or budget at zero gives subsidy 0, not a refusal;
- a version is edited only by making a new one; an approved version never changes
  (maker-checker binds ``spec.content_hash``; the approver is not the maker of that version).

Layout, the pure part:
- ``spec``: the program spec (msgspec Structs, strict), ``decode_spec`` and
  ``validate_spec`` raising ``SpecError`` with the JSON path of the field, ``content_hash``.
  The rule is a tagged union on ``kind`` (``co_payment``, ``grant``); a new kind is one
  more Struct in ``Rule`` plus one decider.
- ``periods``: Asia/Bangkok (fixed UTC+7), ``usage_periods(now) -> (day_key, month_key)``.
- ``eligibility``: ``CitizenProfile``, ``MerchantProfile`` and their checks.
- ``decision``: ``decide_payment(...) -> Split | Refusal``, deciders registered by rule type.
- ``enrolment``: ``decide_enrolment``, ``first_use_deadline``, ``is_forfeited``,
  ``grant_credits`` (the quota is the database's to decide).
- ``examples``: the real schemes as specs (Khon La Khrueng 3, Plus 2025, Thai Chuay Thai
  Plus 2026, Rao Chana, a welfare card with monthly pockets); they seed the demo.
- ``simulation``: replays recorded payments through ``decide_payment`` for a version,
  rebuilding each citizen's usage in memory (the officials' dry run).

The I/O shell, the officials' back office (issue 3):
- ``service``: one visible transaction per use case (load, decide, write, audit): programs
  and their versions (maker-checker approval bound to the content hash, a fresh TOTP code,
  ``effective_at``), the lifecycle, funding from the treasury through the ledger engine,
  stats, simulations, and ``version_at(program, t)`` for enrolment and the payment path;
  named SQL in ``queries.sql``;
- ``http``: the ``/v1/admin/programs`` controller (parse, call one service function, map).

Imports: the pure part imports nothing of this project (a test checks it); ``service`` and
``http`` import ``ledger_core`` (funding moves budget through the ledger) and ``gwallet``
(officials, the audit log, idempotency, problems). Never ``wallet`` or ``merchant_api``.
"""
