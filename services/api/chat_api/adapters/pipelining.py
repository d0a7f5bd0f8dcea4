"""Pipelined Lua script calls, on a single Redis, through Sentinel or on Redis Cluster, each made durable on
replicas (``WAIT``) before any caller sees its reply.

Under load many requests of a worker reach numbering in the same event-loop turn. One call each would cost each a
pool checkout, a socket write and a read (system calls are what a create spends most on here); pipelined, one
write and one read serve them all, and each caller still gets its own reply or error.

Replication: Redis replicates asynchronously, so a number a master handed out may be missing on the replica
promoted when that master dies, and would be handed out again. With ``replicas`` > 0 every round trip ends with
``WAIT <replicas> <timeout>`` on the same connection (WAIT counts the writes of its own connection: it returns
once that many replicas acknowledged everything the connection wrote before it). Fewer acknowledgements in time
fail every call of the round trip with :class:`NotReplicated` (the API answers 503): a number is answered only
once a replica holds it, so a failover to that replica never hands it out again. Cost: one replica round trip
per pipelined batch, not per call.

Redis Cluster: the calls of a round trip are grouped by the master of their slot (each call's keys share one
slot), and each master gets one pipeline (and one WAIT) of its own, all in parallel. ``MOVED`` (the slot moved,
e.g. after a failover) updates the client's slot map and runs the call again on the new master; ``ASK``
(a slot being migrated) runs it once on the target node after ``ASKING``; a connection error fails the calls of
that node and makes the next round trip re-read the slot map first.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence

import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, PipelineCommand
from redis.exceptions import AskError, MovedError, NoScriptError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chat_common.clients.redis_client import is_cluster
from chat_common.wire.keys import key_slot

log = logging.getLogger(__name__)

Call = tuple[Sequence, Sequence, asyncio.Future]
REDIRECTS = 3  # MOVED/ASK/NOSCRIPT rounds a call may take before its error is its answer
REFRESH_EVERY_SECONDS = 0.25  # at most this often, re-read the cluster's slot map after a node failed


class NotReplicated(RedisError):
    """Fewer replicas than required acknowledged the round trip's writes in time: nothing it numbered is answered."""


def _slot_of(key: str | bytes) -> int:
    name = key.decode() if isinstance(key, bytes) else key
    start = name.find("{")
    if start > -1:
        end = name.find("}", start + 1)
        if end > start + 1:
            name = name[start + 1 : end]
    return key_slot(name)


class PipelinedScript:
    """A Lua script whose calls made in one event-loop turn travel together (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        source: str,
        timeout: float | None = None,
        *,
        replicas: int = 0,
        replica_timeout_ms: int = 500,
    ) -> None:
        self.client = client
        self.source = source
        self.timeout = timeout  # for the whole round trip (the client itself may have no per-read timeout)
        self.replicas = replicas
        self.replica_timeout_ms = replica_timeout_ms
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # what EVALSHA names it by (Redis computes the same)
        self.cluster = is_cluster(client)
        self._pending: list[Call] = []
        self._stale_map = False
        self._refreshed = 0.0

    def __call__(self, keys: Sequence, args: Sequence) -> asyncio.Future:
        """Queue one call; the returned future resolves with its reply (or raises its error)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((keys, args, future))
        return future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        asyncio.get_running_loop().create_task(self._execute(batch))

    async def _execute(self, batch: list[Call]) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                replies = await (self._cluster_round_trip(batch) if self.cluster else self._plain_round_trip(batch))
        except BaseException as exc:  # the connection failed: every caller of this round trip gets the error
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), reply in zip(batch, replies, strict=True):
            if future.done():  # the caller was cancelled meanwhile
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    # -- one server (plain URL or Sentinel's master) ------------------------------------------------------------
    async def _plain_round_trip(self, batch: list[Call]) -> list:
        replies = await self._pipeline(batch)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # Redis restarted or flushed its scripts: load it once, run those calls again
            await self.client.script_load(self.source)
            retried = await self._pipeline([batch[i] for i in missing])
            for i, reply in zip(missing, retried, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, batch: list[Call]) -> list:
        # Plain EVALSHA commands: redis-py's Script objects would make each pipeline ask SCRIPT EXISTS first.
        pipe = self.client.pipeline(transaction=False)
        for keys, args, _ in batch:
            pipe.evalsha(self.sha, len(keys), *keys, *args)
        if self.replicas:
            pipe.execute_command("WAIT", self.replicas, self.replica_timeout_ms)
        replies = await pipe.execute(raise_on_error=False)
        return self._replicated(replies) if self.replicas else replies

    def _replicated(self, replies: list) -> list:
        """The script replies of a round trip whose last reply is WAIT's, or NotReplicated for each of them."""
        *replies, acks = replies
        if isinstance(acks, Exception) or int(acks) < self.replicas:
            error = NotReplicated(
                f"{acks} of {self.replicas} replicas acknowledged within {self.replica_timeout_ms} ms"
            )
            return [reply if isinstance(reply, Exception) else error for reply in replies]
        return replies

    # -- Redis Cluster ------------------------------------------------------------------------------------------
    async def _cluster_round_trip(self, batch: list[Call]) -> list:
        cluster = self.client
        await cluster.initialize()  # a no-op once the slot map is known
        if self._stale_map and time.monotonic() - self._refreshed > REFRESH_EVERY_SECONDS:
            self._refreshed = time.monotonic()
            self._stale_map = False
            try:
                await cluster.nodes_manager.initialize()
            except RedisError as exc:  # keep the map we have: the calls of healthy shards must not fail for this
                log.warning("could not refresh the Redis Cluster slot map: %s", exc)
                self._stale_map = True
        replies: list = [None] * len(batch)
        todo = list(range(len(batch)))
        asking: dict[int, ClusterNode] = {}
        for _ in range(REDIRECTS):
            groups: dict[ClusterNode, list[int]] = {}
            for i in todo:
                node = asking.get(i) or cluster.nodes_manager.get_node_from_slot(_slot_of(batch[i][0][0]))
                groups.setdefault(node, []).append(i)
            results = await asyncio.gather(
                *(
                    self._node_round_trip(node, [batch[i] for i in idx], [i in asking for i in idx])
                    for node, idx in groups.items()
                ),
                return_exceptions=True,
            )
            todo, asking = [], {}
            for (node, idx), result in zip(groups.items(), results, strict=True):
                for i, reply in zip(idx, result if isinstance(result, list) else [result] * len(idx), strict=True):
                    if isinstance(reply, BaseException) and not isinstance(reply, Exception):
                        raise reply  # cancelled
                    replies[i] = reply
                    if isinstance(reply, MovedError):
                        await cluster.nodes_manager.move_slot(reply)
                        todo.append(i)
                    elif isinstance(reply, AskError):
                        target = cluster.nodes_manager.get_node(host=reply.host, port=reply.port)
                        if target is not None:
                            asking[i] = target
                            todo.append(i)
                    elif isinstance(reply, NoScriptError):
                        await node.execute_command("SCRIPT", "LOAD", self.source)
                        todo.append(i)
                    elif isinstance(reply, RedisConnectionError | RedisTimeoutError | OSError):
                        self._stale_map = True  # the node may be gone: re-read the slot map next time
            if not todo:
                break
        return replies

    async def _node_round_trip(self, node: ClusterNode, calls: list[Call], asking: list[bool]) -> list:
        """One pipeline to one master: the calls (each after ASKING when redirected there), then WAIT."""
        commands: list[PipelineCommand] = []
        for (keys, args, _), ask in zip(calls, asking, strict=True):
            if ask:
                commands.append(PipelineCommand(len(commands), "ASKING"))
            commands.append(PipelineCommand(len(commands), "EVALSHA", self.sha, len(keys), *keys, *args))
        if self.replicas:
            commands.append(PipelineCommand(len(commands), "WAIT", self.replicas, self.replica_timeout_ms))
        await node.execute_pipeline(commands)
        replies = [command.result for command in commands if command.args[0] != "ASKING"]
        return self._replicated(replies) if self.replicas else replies
