"""gwallet: the composition root and the cross-cutting parts of the service.

``gwallet.app.create_app(settings)`` builds the one Litestar application from ``Settings``;
``gwallet.cli`` is the ``gwallet`` command. Cross-cutting HTTP (problem details,
idempotency keys, limits, health, metrics, logging) lives here; the domain lives in
``ledger_core``, ``subsidy_rules``, ``wallet`` and ``merchant_api``, which never import
this package (except the features' HTTP controllers, which are wired here).
"""
