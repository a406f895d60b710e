"""The pika side of tests/foreign.rs: publishes messages with extreme
properties to QUEUE through the default exchange, one per case, each with
its case name as message id.

Usage: python3 foreign_pika.py URL QUEUE
"""

import decimal
import sys

import pika

BIG = "h" * (100 * 1024)


def cases():
    nested = {"a": [1, {"b": [True, None, decimal.Decimal("2.5"), b"\xff\x00"]}], "c": {"d": {"e": "deep"}}}
    return [
        ("ts-max", {"timestamp": 2**64 - 1}, {}),
        ("big-header", {}, {"big": BIG}),
        ("non-utf8", {}, {"bytes": b"\xff\xfe\x00\x80", "latin1": b"caf\xe9"}),
        ("nested", {}, {"nested": nested, "list": [[1, 2], [], ["x"]]}),
        ("attempt-negative", {}, {"mq-attempt": -5}),
        ("attempt-huge", {}, {"mq-attempt": "99999999999999999999"}),
        ("not-before-far", {}, {"mq-not-before": 99999999999999999}),
        (
            "wrong-types",
            {},
            {
                "mq-attempt": {"not": "a number"},
                "x-delivery-count": "abc",
                "mq-key": b"\xff\xfe",
                "mq-message-id": [1, 2, 3],
                "mq-dead-letter-reason": decimal.Decimal("1.5"),
                "mq-not-before": True,
            },
        ),
    ]


def main(url, queue):
    params = pika.URLParameters(url)
    params.connection_attempts = 3
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.confirm_delivery()
    for name, props, headers in cases():
        ch.basic_publish(
            exchange="",
            routing_key=queue,
            body=("pika " + name).encode(),
            properties=pika.BasicProperties(message_id=name, headers=headers or None, **props),
            mandatory=True,
        )
    conn.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1], sys.argv[2])
