"""Comparing models, versions, adapters and endpoints on the same traffic (README "Comparing models").

:mod:`~monitor.compare.stats` holds the statistics (pure), :mod:`~monitor.compare.queries` the
SQL (one module), :mod:`~monitor.compare.report` puts them together for ``monitor compare``, the
Compare page and the ``canary`` check.
"""
