"""Number allocation in Redis: one Lua script call per create or edit, so numbering is atomic and cheap.

Per application, one hash holds the row id (``id``), the last chat number (``chats``) and each chat's last
message number (``m:<chat>``). Redis may lose everything (it keeps nothing on disk here); the epoch key
tells the scripts whether the counters can be trusted. Without it they answer RECOVERING and nothing is
numbered until :mod:`chat_api.adapters.recovery` has seen every queued write reach MySQL.
Counters are (re)loaded from MySQL only under the epoch that was current before reading MySQL, so a
load can never resurrect a counter value older than a write that landed meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as redis
from redis.exceptions import NoScriptError

from chat_common.keys import RedisKeys

OK = 0
APPLICATION_NOT_LOADED = -1
NOT_FOUND = -2
RECOVERING = -3
CHAT_NOT_LOADED = -4

# KEYS: epoch, application hash [, edit clock]   ARGV: op, chat number, message number
_SCRIPT = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then return {-3, ''} end
local app = KEYS[2]
local id = redis.call('HGET', app, 'id')
if not id then return {-1, epoch} end
local op = ARGV[1]
if op == 'new_chat' then
  local n = redis.call('HINCRBY', app, 'chats', 1)
  redis.call('HSET', app, 'm:' .. n, 0)
  return {0, epoch, tonumber(id), n}
end
local chat = tonumber(ARGV[2])
if chat > tonumber(redis.call('HGET', app, 'chats') or '0') then return {-2, epoch} end
local field = 'm:' .. ARGV[2]
local last = redis.call('HGET', app, field)
if not last then return {-4, epoch, tonumber(id)} end
local n = 0
if op == 'new_message' then
  n = redis.call('HINCRBY', app, field, 1)
  return {0, epoch, tonumber(id), n}
end
if op == 'edit_message' and tonumber(ARGV[3]) > tonumber(last) then return {-2, epoch} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local prev = tonumber(redis.call('GET', KEYS[3]) or '0')
if now <= prev then now = prev + 1 end
redis.call('SET', KEYS[3], string.format('%d', now))
return {0, epoch, tonumber(id), now}
"""

# KEYS: epoch, application hash   ARGV: expected epoch, field, value [, field, value ...]
_LOAD_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
"""


@dataclass(frozen=True, slots=True)
class Allocation:
    """What a script call answered: a status code, the epoch it ran under, and on success (id, value)."""

    status: int
    epoch: str
    application_id: int = 0
    value: int = 0  # the new number, or the edit's version


class PipelinedScript:
    """A Lua script whose calls made in one event-loop turn travel together, as one pipelined round trip.

    Under load many requests of a worker reach numbering in the same loop turn. One call each would cost each a
    pool checkout, a socket write and a read (system calls are what a create spends most on here); pipelined,
    one write and one read serve them all, and each caller still gets its own reply or error.
    """

    def __init__(self, client: redis.Redis, source: str, timeout: float | None = None) -> None:
        self.client = client
        self.source = source
        self.timeout = timeout  # for the whole round trip (the client itself may have no per-read timeout)
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # what EVALSHA names it by (Redis computes the same)
        self._pending: list[tuple[Sequence, Sequence, asyncio.Future]] = []

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

    async def _execute(self, batch: list[tuple[Sequence, Sequence, asyncio.Future]]) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                replies = await self._round_trip(batch)
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:  # Redis restarted or flushed its scripts: load it once, run those calls again
                async with asyncio.timeout(self.timeout):
                    await self.client.script_load(self.source)
                    retried = await self._round_trip([batch[i] for i in missing])
                for i, reply in zip(missing, retried, strict=True):
                    replies[i] = reply
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

    async def _round_trip(self, batch: list[tuple[Sequence, Sequence, asyncio.Future]]) -> list:
        # Plain EVALSHA commands: redis-py's Script objects would make each pipeline ask SCRIPT EXISTS first.
        pipe = self.client.pipeline(transaction=False)
        for keys, args, _ in batch:
            pipe.evalsha(self.sha, len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)


class Numbering:
    """Redis-side numbering for chats and messages, and version stamps for edits."""

    def __init__(self, client: redis.Redis, keys: RedisKeys, timeout: float | None = None) -> None:
        self.client = client
        self.keys = keys
        self.timeout = timeout
        self._script = PipelinedScript(client, _SCRIPT, timeout)
        self._load = client.register_script(_LOAD_SCRIPT)

    async def _call(self, op: str, token: str, chat: int = 0, message: int = 0) -> Allocation:
        keys = [self.keys.epoch, self.keys.application(token), self.keys.edit_clock]
        reply = await self._script(keys=keys, args=[op, chat, message])
        status, epoch = int(reply[0]), reply[1].decode() if isinstance(reply[1], bytes) else reply[1]
        application_id = int(reply[2]) if len(reply) > 2 else 0
        return Allocation(status, epoch, application_id, int(reply[3]) if len(reply) > 3 else 0)

    async def new_chat(self, token: str) -> Allocation:
        """Allocate the application's next chat number."""
        return await self._call("new_chat", token)

    async def new_message(self, token: str, chat_number: int) -> Allocation:
        """Allocate the chat's next message number."""
        return await self._call("new_message", token, chat_number)

    async def edit_chat(self, token: str, chat_number: int) -> Allocation:
        """Check the chat exists and stamp a rename with a fresh version."""
        return await self._call("edit_chat", token, chat_number)

    async def edit_message(self, token: str, chat_number: int, message_number: int) -> Allocation:
        """Check the message exists and stamp an edit with a fresh version."""
        return await self._call("edit_message", token, chat_number, message_number)

    async def load_application(self, token: str, epoch: str, application_id: int, last_chat_number: int) -> bool:
        """Seed an application's counters from MySQL; refused (False) if the epoch changed meanwhile."""
        fields = ["id", application_id, "chats", last_chat_number]
        async with asyncio.timeout(self.timeout):
            return bool(await self._load(keys=[self.keys.epoch, self.keys.application(token)], args=[epoch, *fields]))

    async def load_chat(self, token: str, epoch: str, chat_number: int, last_message_number: int) -> bool:
        """Seed one chat's message counter from MySQL; refused (False) if the epoch changed meanwhile."""
        args = [epoch, f"m:{chat_number}", last_message_number]
        async with asyncio.timeout(self.timeout):
            return bool(await self._load(keys=[self.keys.epoch, self.keys.application(token)], args=args))

    async def ping(self) -> bool:
        """True when Redis answers."""
        async with asyncio.timeout(self.timeout):
            return bool(await self.client.ping())
