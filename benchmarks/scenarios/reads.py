"""Scenario ``reads`` (scenario 5): pages and searches of chats of 10k and 100k messages, page 1 and a deep
page by keyset."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from benchmarks.knobs import HEADLINE_CONCURRENCY, READ_CONCURRENCY, SEARCH_FRAGMENTS

if TYPE_CHECKING:
    from benchmarks.runner import Bench


def reads(bench: Bench) -> list[dict]:
    """Scenario 5: pages of a chat's messages, and a search in it, for chats of 10k and 100k messages.

    Random pages 1..50 (``?page=``) and searches at c = 1, 16, 64 (the requests of earlier runs), then on the
    big chat at c=64: page 1 (``?per_page=20``, the default size) and a deep page by keyset
    (``?after=<N-40>``, two pages from the end), whose cost should not depend on the depth.
    """
    filled = bench.fill()
    token = filled["token"]
    out = []
    rng = random.Random(7)
    for size, chat in sorted(filled["read_chats"].items()):
        base = f"/applications/{token}/chats/{chat}/messages"
        pages = [f"{base}?page={rng.randint(1, 50)}" for _ in range(32)]
        searches = [f"{base}/search?query={q}" for q in SEARCH_FRAGMENTS]
        bench.log(f"scenario 5: reads in a chat of {size} messages")
        for kind, paths in (("page", pages), ("search", searches)):
            for c in READ_CONCURRENCY:
                point = bench.measure(bench.api, f"GET {kind} ({size // 1000}k)", paths, c)
                out.append({"chat_messages": size, "kind": kind, **point})
    size, chat = max(filled["read_chats"].items())
    base = f"/applications/{token}/chats/{chat}/messages"
    keyset = (("page 1", f"{base}?per_page=20"), ("deep page", f"{base}?after={size - 40}"))
    bench.log(f"scenario 5: page 1 and a deep page (after={size - 40}) of the {size}-message chat")
    for kind, path in keyset:
        answer = bench.client.session.get(f"{bench.api.base_url}{path}", timeout=10)
        if answer.status_code != 200 or len(answer.json()) != 20:
            raise RuntimeError(f"GET {path}: {answer.status_code} with {len(answer.content)} bytes")
        point = bench.measure(bench.api, f"GET {kind} ({size // 1000}k)", [path], HEADLINE_CONCURRENCY)
        out.append({"chat_messages": size, "kind": kind, "path": path.removeprefix(base), **point})
    return out


def run(bench: Bench) -> dict:
    """The figures under ``reads``."""
    return {"reads": reads(bench)}
