"""subsidy_rules: subsidy programs and the pure decision of how much the state pays.

Nouns: a **program** (a subsidy scheme such as half-half co-payment, with its budget account
in the ledger), a **program version** (an immutable spec: share in basis points, daily /
monthly / total caps in satang, spending hours in Asia/Bangkok, eligible merchant categories
and regions, quota of enrolments, exclusions of other programs), an **enrolment** (a citizen's
right in one program), and a **subsidy decision** (for one purchase: subsidy amount, citizen
amount, the rule that limited it, in words).

Invariants:
- the decision is a pure function of (program version, enrolment usage, purchase, now): no I/O,
  no clock, no randomness; table-driven tests cover every rule and every refusal;
- money is integer satang, rates are integer basis points, and rounding is written once
  (the state's share rounds down, so the state never pays a fraction of a satang too much);
- subsidy + citizen share == price; the subsidy never passes a cap or the remaining budget;
- a version is edited only by making a new one; an approved version never changes
  (maker-checker: the approver is not the maker of that version).

Layout (to come): the pure part (``spec``, ``decide``) and the officials' program service
(``service``, ``queries.sql``) that opens one visible transaction per use case.

Imports: the pure part imports nothing of this project; the service may import
``ledger_core`` (funding moves budget through the ledger). Never ``wallet``, ``merchant_api``
or ``gwallet``.
"""
