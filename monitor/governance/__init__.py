"""Records governance: the audit log of who did what with the records (:mod:`.audit`, :mod:`.actor`)
and erasure of one person's rows from every table (:mod:`.erase`). Retention is the store's
(:mod:`monitor.store.retention`), exports too (:mod:`monitor.store.export`). README "Records
governance" maps these to record-keeping duties."""
