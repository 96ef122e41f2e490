"""A small stand-in for a gateway's event path, run as a subprocess by the fault tests.

It opens the write-ahead log and the producer exactly as the gateway does, publishes ``--count``
realistic interactions numbered from ``--first``, prints ``published N`` and then either waits to
be killed, or (``--drain``) waits until Kafka has acknowledged everything in the log, prints
``drained`` and exits. Loading the real model is not needed to test what matters here: the log.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared event factory

from pipeline_events import interaction

from feedback.producer import EventProducer, kafka_sender_factory
from feedback.settings import KafkaSettings
from feedback.wal import WriteAheadLog


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wal", type=Path, required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--drain", action="store_true")
    args = parser.parse_args()
    kafka = KafkaSettings(bootstrap_servers=args.bootstrap, bootstrap_timeout_ms=500, request_timeout_ms=3000)
    wal = WriteAheadLog(args.wal, max_bytes=1 << 30, segment_bytes=1 << 20, fsync_each=False)
    producer = EventProducer(wal, kafka_sender_factory(kafka), fsync_interval_s=0.05)
    producer.start()
    for n in range(args.first, args.first + args.count):
        producer.publish(args.topic, interaction(n))
    print(f"published {args.count}", flush=True)
    if args.drain:
        if not producer.flush(120):
            sys.exit(f"not drained: {producer.health()}")
        producer.close(5)
        print("drained", flush=True)
        return
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
