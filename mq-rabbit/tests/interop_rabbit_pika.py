"""The pika side of mq-rabbit/tests/interop_rabbit.rs: a native AMQP client talking to mq.

Usage: python3 interop_rabbit_pika.py MODE URL QUEUE
  publish   publish the reference message to QUEUE through the default exchange
  consume   consume one message from QUEUE and check it is the reference message sent by mq
  declare   declare QUEUE the way another application would (not durable, with a max length)
  rpc       send a request to QUEUE with direct reply-to and check mq's reply

Exits non-zero with a message on stderr when a check fails.
"""

import sys

import pika

# The reference message; mq-rabbit/tests/interop_rabbit.rs has the same values.
BODY = "payload \u00e9\u00fc \0 end".encode("utf-8")
HEADERS = {
    "X-Mixed-Case": "Value",
    "unicode": "caf\u00e9 \u2713",
    "empty": "",
    "tenant": "acme",
}
MESSAGE_ID = "interop-1"
CONTENT_TYPE = "text/plain; charset=utf-8"
CORRELATION_ID = "corr-1"


def fail(msg):
    print("pika: " + msg, file=sys.stderr)
    sys.exit(1)


def as_text(v):
    return v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else v


def connect(url):
    params = pika.URLParameters(url)
    params.connection_attempts = 3
    return pika.BlockingConnection(params)


def publish(url, queue):
    conn = connect(url)
    ch = conn.channel()
    ch.confirm_delivery()
    headers = dict(HEADERS)
    headers["count"] = 42  # a non-string header: mq shows it as text
    headers["flag"] = True
    ch.basic_publish(
        exchange="",
        routing_key=queue,
        body=BODY,
        properties=pika.BasicProperties(
            headers=headers,
            message_id=MESSAGE_ID,
            content_type=CONTENT_TYPE,
            correlation_id=CORRELATION_ID,
            delivery_mode=2,
        ),
        mandatory=True,
    )
    conn.close()


def consume(url, queue):
    conn = connect(url)
    ch = conn.channel()
    method, props, body = None, None, None
    for _ in range(100):
        method, props, body = ch.basic_get(queue=queue, auto_ack=False)
        if method is not None:
            break
        conn.sleep(0.1)
    if method is None:
        fail("no message in " + queue)
    if body != BODY:
        fail("body %r != %r" % (body, BODY))
    got = {k: as_text(v) for k, v in (props.headers or {}).items()}
    for k, v in HEADERS.items():
        if got.get(k) != v:
            fail("header %r: %r != %r (all: %r)" % (k, got.get(k), v, got))
    if props.message_id != MESSAGE_ID:
        fail("message_id %r" % props.message_id)
    if props.content_type != CONTENT_TYPE:
        fail("content_type %r" % props.content_type)
    if props.correlation_id != CORRELATION_ID:
        fail("correlation_id %r" % props.correlation_id)
    if props.delivery_mode != 2:
        fail("delivery_mode %r (persistent expected)" % props.delivery_mode)
    if got.get("mq-key") != "key-1":
        fail("mq-key header %r" % got.get("mq-key"))
    ch.basic_ack(method.delivery_tag)
    conn.close()


def declare(url, queue):
    conn = connect(url)
    ch = conn.channel()
    ch.queue_declare(queue=queue, durable=False, arguments={"x-max-length": 1000})
    conn.close()


def rpc(url, queue):
    conn = connect(url)
    ch = conn.channel()
    replies = []
    ch.basic_consume(
        queue="amq.rabbitmq.reply-to",
        on_message_callback=lambda c, m, p, b: replies.append((p, b)),
        auto_ack=True,
    )
    ch.basic_publish(
        exchange="",
        routing_key=queue,
        body=b"ping",
        properties=pika.BasicProperties(
            reply_to="amq.rabbitmq.reply-to", correlation_id="rpc-7"
        ),
    )
    for _ in range(300):
        conn.process_data_events(time_limit=0.1)
        if replies:
            break
    if not replies:
        fail("no reply from mq")
    props, body = replies[0]
    if body != b"PONG":
        fail("reply body %r" % body)
    if props.correlation_id != "rpc-7":
        fail("reply correlation_id %r" % props.correlation_id)
    conn.close()


if __name__ == "__main__":
    mode, url, queue = sys.argv[1:4]
    {"publish": publish, "consume": consume, "declare": declare, "rpc": rpc}[mode](url, queue)
    print("pika: %s ok" % mode)
