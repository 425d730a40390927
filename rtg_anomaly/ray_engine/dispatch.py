"""Hand items to a fixed set of Ray actors and take the results back in input order.

Ray restarts a dead actor and retries its calls (``max_restarts`` / ``max_task_retries`` on the actor
class); an item whose actor is gone for good is handed to another one. The driver holds at most
``window`` items between the first unfinished one and the last one handed out, so its memory stays
bounded however long the input and however slow one scan.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence

# Restarts of one actor (a worker process killed, a node lost) before its items go to the other actors.
ACTOR_RESTARTS = 2
# Calls queued on one actor: the next item is already there when one finishes.
CALLS_PER_ACTOR = 2


class WorkersLost(RuntimeError):
    """Every actor died more often than Ray restarts one: nothing is left to run the remaining items."""


class OrderedMap:
    """Call ``method`` of the actors on every item; iterate to get ``(index, result)`` in input order.

    actors: Ray actor handles (each created with ``max_restarts`` and ``max_task_retries``).
    call_args: item index -> the arguments of the call for that item.
    window: most items handed out beyond the first unfinished one (default 4 per actor).
    """

    def __init__(self, actors: Sequence, method: str, n_items: int, call_args: Callable[[int], tuple],
                 window: int | None = None):
        self.method, self.n_items, self.call_args = method, n_items, call_args
        self.window = window or 4 * CALLS_PER_ACTOR * len(actors)
        self.load = {actor: 0 for actor in actors}  # live actors -> calls in flight
        self.queue = list(range(n_items))  # a heap: the lowest index goes out first, retried ones too
        self.pending: dict = {}  # object ref -> (index, actor)
        self.done: dict[int, object] = {}
        self.next_out = 0

    def __iter__(self) -> Iterator[tuple[int, object]]:
        import ray

        while self.next_out < self.n_items:
            self._submit()
            if self.next_out in self.done:
                index = self.next_out
                self.next_out += 1
                yield index, self.done.pop(index)
                continue
            ready, _ = ray.wait(list(self.pending), num_returns=1)
            self._collect(ready)

    def _submit(self) -> None:
        while self.queue and self.queue[0] < self.next_out + self.window:
            actor = min(self.load, key=self.load.get, default=None)
            if actor is None:
                raise WorkersLost(f"all Ray workers died; {self.n_items - self.next_out} scans were not finished")
            if self.load[actor] >= CALLS_PER_ACTOR:
                return
            index = heapq.heappop(self.queue)
            ref = getattr(actor, self.method).remote(*self.call_args(index))
            self.pending[ref] = (index, actor)
            self.load[actor] += 1

    def _collect(self, ready) -> None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        from .workers import unwrap

        for ref in ready:
            index, actor = self.pending.pop(ref)
            try:
                self.done[index] = ray.get(ref)
            except RayActorError:  # restarts used up: its items go to the others
                self.load.pop(actor, None)
                heapq.heappush(self.queue, index)
                continue
            except RayTaskError as exc:  # the worker's own failure, as the in-process run would raise it
                raise unwrap(exc) from None
            if actor in self.load:
                self.load[actor] -= 1

    def any_actor(self):
        """A live actor, for a call outside the map (Ray restarts it if it dies meanwhile)."""
        if not self.load:
            raise WorkersLost("all Ray workers died")
        return min(self.load, key=self.load.get)

    def finished(self) -> list[tuple[int, object]]:
        """After an interruption: the results that arrived (or arrive within a moment) but were not yet
        yielded, in input order; the calls still running are cancelled."""
        import ray
        from ray.exceptions import RayError

        if self.pending:
            ready, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0.5)
            for ref in ready:
                index, _ = self.pending.pop(ref)
                try:
                    self.done[index] = ray.get(ref)
                except RayError:
                    pass
        for ref in self.pending:
            ray.cancel(ref)
        self.pending.clear()
        results = sorted(self.done.items())
        self.done.clear()
        return results
