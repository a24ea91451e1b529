"""Reading ``alert_events``: the latest fire / resolve of each alert, and the latest events, written
once for their readers.

``alert_events`` is append-only: each transition of an alert adds a row. What an alert *is* now is
its latest ``fire`` or ``resolve`` row. Three readers need that, each with its own columns: the
manager restoring its states after a restart, ``monitor alerts list``, and the Alerts page. The
last two also list the latest events themselves (:func:`recent_sql`).
"""

from __future__ import annotations

__all__ = ["LATEST_COLUMNS", "latest_sql", "RECENT_COLUMNS", "recent_sql"]

LATEST_COLUMNS = ("alert_id", "last_event", "at", "rule", "severity", "model", "group", "notification_id",
                  "summary", "details")
"""The columns :func:`latest_sql` returns, in order (``at``: the time of the latest event)."""


def latest_sql(firing_only: bool = False, models_param: str | None = None) -> str:
    """The latest fire / resolve of every alert, newest first. ``firing_only`` keeps the alerts whose
    latest event is a fire (firing now, whatever the time range); ``models_param`` names an
    ``Array(String)`` query parameter the alert's model must be in."""
    having = []
    if firing_only:
        having.append("last_event = 'fire'")
    if models_param:
        having.append(f"model IN {{{models_param}:Array(String)}}")
    return ("SELECT alert_id, argMax(event, timestamp) AS last_event, max(timestamp) AS at, "
            "argMax(rule, timestamp) AS rule, argMax(severity, timestamp) AS severity, "
            "argMax(model, timestamp) AS model, argMax(group, timestamp) AS group, "
            "argMax(notification_id, timestamp) AS notification_id, argMax(summary, timestamp) AS summary, "
            "argMax(details, timestamp) AS details "
            "FROM alert_events WHERE event IN ('fire', 'resolve') GROUP BY alert_id"
            + (f" HAVING {' AND '.join(having)}" if having else "") + " ORDER BY at DESC")


RECENT_COLUMNS = ("timestamp", "event", "rule", "severity", "model", "group", "summary", "alert_id",
                  "notification_id")
"""The columns :func:`recent_sql` returns, in order."""


def recent_sql(where: str = "") -> str:
    """Alert events of every kind (fire, resolve, test), newest first, at most ``{limit:UInt32}``;
    ``where``: a parameterised condition narrowing them (a time range, models)."""
    return (f"SELECT {', '.join(RECENT_COLUMNS)} FROM alert_events" + (f" WHERE {where}" if where else "")
            + " ORDER BY timestamp DESC LIMIT {limit:UInt32}")
