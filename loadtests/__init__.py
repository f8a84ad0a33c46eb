"""loadtests: benchmarks and load runs against this machine only (127.0.0.1).

Nouns: a **benchmark** (a bounded run that measures its own reference first, in the same run:
R_tpcb, R_ping; see shared/PERFORMANCE.md), a **load shape** (offered load over time: the
opening minute of a registration storm, the first morning of a phase, lunch hour), **seed
data** (millions of citizens, merchants and enrolments, drawn at random per request), and the
**runner** that records the command, the machine and the figures in BENCHMARKS.md.

Invariants:
- every run is bounded in time and request count, targets 127.0.0.1 only, and stops by itself;
- durability stays on (``synchronous_commit=on``, ``fsync=on``);
- after every run the invariants are checked: the ledger balances, no cap or budget exceeded,
  quotas exact, no duplicate effect of any idempotency key.

Modules: ``ledger_bench`` (the batching engine vs R_tpcb vs a naive baseline), ``r_ping``
(the HTTP ceiling per ASGI server), ``population`` (every seeded credential derived from one
secret), ``seed`` (millions of citizens and merchants by COPY, top-ups through the engine),
``locustfile`` and ``shapes`` (the journeys and the load over time), ``run`` (one bounded
headless run with its references and one summary), ``invariants`` (the checks after a run),
``faults`` (Redis killed, PostgreSQL stopped, under load).

Imports: anything of this project. Locust (installed with the test extra, for the suite's
short smoke run) is imported only by the locustfile, which runs in Locust's own processes: its
gevent monkey-patching must never load inside the service or the test process.
"""
