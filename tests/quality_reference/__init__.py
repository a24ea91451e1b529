"""The quality detectors as they were before the per-event fast paths (frozen; do not edit).

A verbatim copy of ``detectors.py``, ``language_id.py`` and ``refusal.py`` at commit 39b181c, changed
only in their imports (this package instead of ``monitor.quality``) and in sharing the live module's
loaded py3langid model. It is the oracle of the differential check: ``tests/test_quality_detectors.py``
and ``bench/quality.py`` assert that :func:`monitor.quality.analyse` gives exactly the flags
:func:`monitor.quality._reference.detectors.analyse` gives. Nothing at ingest imports it.
Delete it together with that check once the fast paths have settled.
"""
