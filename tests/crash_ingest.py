"""Run ingest until its first insert is acknowledged by ClickHouse, then die before committing offsets.

``python tests/crash_ingest.py BOOTSTRAP CHDB_DIR GROUP SPANS_TOPIC`` exits with status 9
(os._exit: no cleanup, no commit, like kill -9) right after the first batch is stored.
"""

import logging
import os
import sys
import time

from monitor.config import load
from monitor.runtime.apps import Ingest

def main():
    bootstrap, chdb_dir, group, topic = sys.argv[1:5]
    settings = load(overrides={
        "kafka": {"bootstrap_servers": bootstrap, "group_id": group, "spans_topic": topic,
                  "metrics_topic": topic + "_m", "logs_topic": topic + "_l"},
        "store": {"url": f"chdb://{chdb_dir}"},
        "ingest": {"max_poll_records": 50, "max_batch_messages": 50, "flush_interval_ms": 50},
        "telemetry": {"metrics_port": 0},
    })
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    app = Ingest(settings)
    real_write = app.writer.write_native


    def write_then_die(blocks, counts, token):
        real_write(blocks, counts, token)
        print(f"inserted {counts.get('otel_traces', 0)} spans with token {token}; dying before commit", flush=True)
        os._exit(9)

    app.writer.write_native = write_then_die
    app.start()
    time.sleep(150)  # a loaded CI machine: the group join and the first fetch can take a while
    print("no batch arrived", flush=True)
    sys.exit(1)


if __name__ == "__main__":  # ingest's worker processes are spawned: they import this file
    main()
