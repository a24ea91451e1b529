"""Run the sidecar's forwarder until Kafka acknowledged its first chunk, then die before the spool delete.

``python tests/crash_sidecar.py BOOTSTRAP SPOOL SPANS METRICS LOGS`` exits with status 9 (os._exit:
no cleanup, like kill -9) right after the broker acked the first chunk read from an existing spool.
"""

import os
import sys
import time

from monitor.config import load
from monitor.runtime.apps import Sidecar

bootstrap, spool, spans, metrics, logs = sys.argv[1:6]
settings = load(overrides={
    "kafka": {"bootstrap_servers": bootstrap, "spans_topic": spans, "metrics_topic": metrics, "logs_topic": logs},
    "spool": {"path": spool},
    "receiver": {"grpc_port": 0, "http_port": 0},
    "telemetry": {"metrics_port": 0},
})
app = Sidecar(settings)


def die_instead_of_delete(done, clear_in_flight=True):
    print(f"kafka acknowledged {len(done)} messages; dying before deleting them from the spool", flush=True)
    os._exit(9)


app.spool.delete = die_instead_of_delete
app.start()
time.sleep(120)
print("nothing was forwarded", flush=True)
sys.exit(1)
