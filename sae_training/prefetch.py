"""Reading batches ahead in a background thread."""

from __future__ import annotations

import queue
import threading
from typing import Any

import torch

__all__ = ["prefetch"]


def prefetch(iterable: Any, depth: int, pin: bool = False):
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead (same order).

    Exceptions of the producer are re-raised in the consumer; ``pin`` pins tensors for
    asynchronous host-to-device copies."""
    if depth <= 0:
        yield from iterable
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for item in iterable:
                if pin and torch.is_tensor(item) and item.device.type == "cpu":
                    item = item.pin_memory()
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    thread = threading.Thread(target=produce, daemon=True, name="sae-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
