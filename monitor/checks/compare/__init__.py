"""Comparing models, versions, adapters and endpoints on the same traffic (README "Comparing models").

:mod:`~monitor.checks.compare.stats` holds the statistics (pure), :mod:`~monitor.checks.compare.queries` the
SQL (one module), :mod:`~monitor.checks.compare.report` puts them together for ``monitor compare``, the
Compare page and the ``canary`` check.
"""
