"""moto_server with a faster clock for its SQS model.

moto 5 computes a queue's attributes on every SendMessage, and each of
them scans every message of the queue, asking each one whether it is
visible or delayed; each question calls `unix_time_millis()`, which does
naive-datetime arithmetic. At a depth of 2,000 messages one SendMessageBatch
took about 190 ms and draining the queue about 2 minutes, so scenarios that
move a few thousand messages could not finish. This replaces that one
function, as moto's SQS model sees it, with the same value computed from
`time.time()` (about 25x faster end to end); nothing else changes. If a
moto version no longer has the function, moto runs unpatched and this says
so on stderr.

It also makes moto's SQS queues safe for concurrent requests (moto's
server runs each request on its own thread). moto 5.2 deletes a message
by rebuilding the queue's message list without a lock, so two deletes at
once can each write back the other's message: an acknowledged message
came back to the queue (the conformance suite's rebalance scenario saw
10-40 of 5,000 return under load), which real SQS never does. Receives
and visibility changes mutate the same list and in-flight set unlocked
("Set changed size during iteration" in moto's log). Receive, delete and
change-visibility now hold the queue's own lock (the re-entrant lock of
its `_messages_lock` condition, which a long poll releases while it
waits), so they act on the queue one at a time, as SQS does. SNS topics
get the same treatment: a publish iterates a topic's subscriptions while
another thread subscribes or unsubscribes, and moto's PublishBatch then
drops the entry from both its successful and failed lists (the SDK reports
"no outcome"); topic and subscription changes and publishes hold one lock.

Finally, a long poll sees a FIFO message group open up again. moto takes
the set of blocked groups once per ReceiveMessage and keeps it for the
whole wait, so a receive that arrives just before the delete of a group's
last in-flight message waits out its full WaitTimeSeconds, where SQS
answers as soon as the group is open. Here a long poll is a series of
immediate receives, 50 ms apart or as soon as a message is added, until
one returns something or the wait is over.

Usage: python scripts/moto_server.py [moto_server arguments]
"""

import datetime
import sys
import threading
import time

import moto.sns.models as sns_models
import moto.sqs.models as sqs_models
from moto.server import main

_EPOCH = datetime.datetime(1970, 1, 1)


def unix_time_millis(dt=None):
    """Milliseconds since the Unix epoch, now or at naive-UTC `dt`."""
    if dt is None:
        return time.time() * 1000.0
    return (dt - _EPOCH).total_seconds() * 1000.0


if hasattr(sqs_models, "unix_time_millis"):
    sqs_models.unix_time_millis = unix_time_millis
else:
    print("moto_server.py: moto.sqs.models.unix_time_millis not found; running moto unpatched",
          file=sys.stderr)



def _one_at_a_time(method):
    """`method(self, queue_name, ...)` of the SQS backend, run while holding
    that queue's lock (a missing queue is left to moto's own error)."""

    def locked(self, queue_name, *args, **kwargs):
        try:
            queue = self.get_queue(queue_name)
        except Exception:  # moto's QueueDoesNotExist: let the call raise it
            return method(self, queue_name, *args, **kwargs)
        with queue._messages_lock:
            return method(self, queue_name, *args, **kwargs)

    locked.__doc__ = method.__doc__
    return locked


def _long_poll(receive):
    """`receive(self, queue_name, count, wait, visibility, names)` as a series
    of immediate receives (each with a fresh view of blocked FIFO groups)
    until one returns messages or `wait` seconds have passed."""

    def polling(self, queue_name, count, wait_seconds_timeout, *args, **kwargs):
        deadline = time.time() + float(wait_seconds_timeout or 0)
        while True:
            result = receive(self, queue_name, count, 0, *args, **kwargs)
            left = deadline - time.time()
            if result or left <= 0:
                return result
            queue = self.get_queue(queue_name)
            with queue._messages_lock:
                queue._messages_lock.wait(timeout=min(0.05, left))

    polling.__doc__ = receive.__doc__
    return polling


_LOCKED = ("receive_message", "delete_message", "change_message_visibility")
if all(hasattr(sqs_models.SQSBackend, name) for name in _LOCKED) and hasattr(
    sqs_models.Queue, "delete_message"
):
    for _name in _LOCKED:
        setattr(sqs_models.SQSBackend, _name, _one_at_a_time(getattr(sqs_models.SQSBackend, _name)))
    sqs_models.SQSBackend.receive_message = _long_poll(sqs_models.SQSBackend.receive_message)
else:
    print("moto_server.py: moto's SQS backend changed; its queues are not locked",
          file=sys.stderr)

_SNS_LOCK = threading.RLock()


def _under_sns_lock(method):
    """`method` of the SNS backend, run while holding `_SNS_LOCK`."""

    def locked(self, *args, **kwargs):
        with _SNS_LOCK:
            return method(self, *args, **kwargs)

    locked.__doc__ = method.__doc__
    return locked


_SNS_LOCKED = ("create_topic", "delete_topic", "subscribe", "unsubscribe", "publish",
               "set_subscription_attributes")
if all(hasattr(sns_models.SNSBackend, name) for name in _SNS_LOCKED):
    for _name in _SNS_LOCKED:
        setattr(sns_models.SNSBackend, _name, _under_sns_lock(getattr(sns_models.SNSBackend, _name)))
else:
    print("moto_server.py: moto's SNS backend changed; its topics are not locked",
          file=sys.stderr)

if __name__ == "__main__":
    main()
