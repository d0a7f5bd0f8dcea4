"""Number allocation in Redis: one Lua script call per create or edit, so numbering is atomic and cheap.

Per application, one hash (:meth:`RedisKeys.numbers`, keyed by the application's id under its Redis Cluster hash
tag, never by token: every token of a rotated application numbers into the same sequence) holds the row id
(``id``, present once loaded), the last chat number (``chats``), each chat's last message number (``m:<chat>``)
and the time of the last create or edit (``at``, the tenant's last activity). Redis may lose everything (it keeps
nothing on disk here); the epoch key of the application's hash slot (:meth:`RedisKeys.epoch_of`, in the same slot,
so the script runs on Redis Cluster) tells the scripts whether the counters can be trusted. Without it they answer
RECOVERING and nothing is numbered until :mod:`chat_api.adapters.recovery` has seen every queued write reach MySQL.
Counters are (re)loaded from MySQL only under the epoch that was current before reading MySQL, so a
load can never resurrect a counter value older than a write that landed meanwhile. A load also reads the hash the
previous version kept per token (:meth:`RedisKeys.legacy_application`) and never seeds below it, so numbers handed
out before the upgrade and still on their way to MySQL are never handed out again.

A tenant's ``maxChats`` is checked inside the script, before a number is taken (LIMIT_REACHED burns no number).
"""

from __future__ import annotations

import asyncio

import redis.asyncio as redis

from chat_api.adapters.pipelining import PipelinedScript
from chat_api.model import Allocation, AllocationStatus
from chat_common.wire.keys import RedisKeys

# The script's answers (the values live in the model: they cross the numbering port).
OK = AllocationStatus.OK
APPLICATION_NOT_LOADED = AllocationStatus.APPLICATION_NOT_LOADED
NOT_FOUND = AllocationStatus.NOT_FOUND
RECOVERING = AllocationStatus.RECOVERING
CHAT_NOT_LOADED = AllocationStatus.CHAT_NOT_LOADED
LIMIT_REACHED = AllocationStatus.LIMIT_REACHED

# KEYS: see Numbering.script_keys (the slot's epoch, the application hash: one hash slot)
# Edit versions come from the application's own clock (field ``v`` of its hash), not a global key: a version only
# has to grow per row (the writers keep the newest edit of each row), and every row belongs to one application, so a
# per-application clock is enough and keeps the script in the application's slot with no global hot key.
# ARGV: op, chat number, message number, max chats (0: no limit)
NUMBERING_SCRIPT = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then return {-3, ''} end
local app = KEYS[2]
local id = redis.call('HGET', app, 'id')
if not id then return {-1, epoch} end
local op = ARGV[1]
local t = redis.call('TIME')
if op == 'new_chat' then
  local limit = tonumber(ARGV[4])
  if limit > 0 and tonumber(redis.call('HGET', app, 'chats') or '0') >= limit then return {-5, epoch, tonumber(id)} end
  local n = redis.call('HINCRBY', app, 'chats', 1)
  redis.call('HSET', app, 'm:' .. n, 0, 'at', t[1])
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
  redis.call('HSET', app, 'at', t[1])
  return {0, epoch, tonumber(id), n}
end
if op == 'edit_message' and tonumber(ARGV[3]) > tonumber(last) then return {-2, epoch} end
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local prev = tonumber(redis.call('HGET', app, 'v') or '0')
if now <= prev then now = prev + 1 end
redis.call('HSET', app, 'v', string.format('%d', now), 'at', t[1])
return {0, epoch, tonumber(id), now}
"""

# KEYS: epoch, application hash   ARGV: expected epoch, field, value [, field, value ...]
LOAD_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
"""


class Numbering:
    """Redis-side numbering for chats and messages, and version stamps for edits."""

    def __init__(
        self,
        client: redis.Redis,
        keys: RedisKeys,
        timeout: float | None = None,
        *,
        replicas: int = 0,
        replica_timeout_ms: int = 500,
    ) -> None:
        self.client = client
        self.keys = keys
        self.timeout = timeout
        # replicas > 0: every round trip ends with WAIT; a number is answered only once that many replicas hold it.
        self._script = PipelinedScript(
            client, NUMBERING_SCRIPT, timeout, replicas=replicas, replica_timeout_ms=replica_timeout_ms
        )
        self._load = client.register_script(LOAD_SCRIPT)

    def script_keys(self, application_id: int) -> list[str]:
        """The numbering script's KEYS for one application (the one place their list is built)."""
        return [self.keys.epoch_of(application_id), self.keys.numbers(application_id)]

    async def _call(self, op: str, application_id: int, chat: int = 0, message: int = 0, limit: int = 0) -> Allocation:
        reply = await self._script(keys=self.script_keys(application_id), args=[op, chat, message, limit])
        status, epoch = int(reply[0]), reply[1].decode() if isinstance(reply[1], bytes) else reply[1]
        found_id = int(reply[2]) if len(reply) > 2 else 0
        return Allocation(status, epoch, found_id, int(reply[3]) if len(reply) > 3 else 0)

    async def new_chat(self, application_id: int, max_chats: int = 0) -> Allocation:
        """Allocate the application's next chat number; LIMIT_REACHED (no number taken) at ``max_chats`` chats."""
        return await self._call("new_chat", application_id, limit=max_chats)

    async def new_message(self, application_id: int, chat_number: int) -> Allocation:
        """Allocate the chat's next message number."""
        return await self._call("new_message", application_id, chat_number)

    async def edit_chat(self, application_id: int, chat_number: int) -> Allocation:
        """Check the chat exists and stamp a rename with a fresh version."""
        return await self._call("edit_chat", application_id, chat_number)

    async def edit_message(self, application_id: int, chat_number: int, message_number: int) -> Allocation:
        """Check the message exists and stamp an edit with a fresh version."""
        return await self._call("edit_message", application_id, chat_number, message_number)

    def load_keys(self, application_id: int) -> list[str]:
        """The load script's KEYS for one application."""
        return [self.keys.epoch_of(application_id), self.keys.numbers(application_id)]

    async def _seed(self, application_id: int, epoch: str, fields: dict[str, int], legacy_token: str) -> bool:
        # upgrade-only: remove after release 0.2 (never seed below 0.1.x's per-token counters)
        if legacy_token:
            # A plain command of its own (the legacy key is in another hash slot than the script's keys). The
            # legacy hash no longer changes once every API process runs this version, so reading it first is safe.
            legacy = self.keys.legacy_application(legacy_token)
            async with asyncio.timeout(self.timeout):
                kept = await self.client.hmget(legacy, [f for f in fields if f != "id"])
            for name, value in zip([f for f in fields if f != "id"], kept, strict=True):
                if value is not None:
                    fields[name] = max(fields[name], int(value))
        args = [epoch, *(item for pair in fields.items() for item in pair)]
        async with asyncio.timeout(self.timeout):
            return bool(await self._load(keys=self.load_keys(application_id), args=args))

    async def load_application(
        self, application_id: int, epoch: str, last_chat_number: int, legacy_token: str = ""
    ) -> bool:
        """Seed an application's counters from MySQL (never below the counters the previous version kept per token,
        under ``legacy_token``); refused (False) if the epoch changed meanwhile."""
        return await self._seed(application_id, epoch, {"id": application_id, "chats": last_chat_number}, legacy_token)

    async def load_chat(
        self, application_id: int, epoch: str, chat_number: int, last_message_number: int, legacy_token: str = ""
    ) -> bool:
        """Seed one chat's message counter from MySQL (as :meth:`load_application`); refused if the epoch changed."""
        return await self._seed(application_id, epoch, {f"m:{chat_number}": last_message_number}, legacy_token)

    async def last_edit(self, application_id: int) -> float | None:
        """Unix time of the application's last edit (its edit clock, field ``v``), None if it never edited."""
        async with asyncio.timeout(self.timeout):
            version = await self.client.hget(self.keys.numbers(application_id), "v")
        return None if version is None else int(version) / 1e6

    async def ping(self) -> bool:
        """True when Redis answers."""
        async with asyncio.timeout(self.timeout):
            return bool(await self.client.ping())
