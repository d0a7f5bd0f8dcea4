"""`python -m message_writer.reindex`: rebuild the search index from MySQL without downtime.

Builds a new concrete index, fills it from MySQL in id order (progress bar), swaps the alias atomically, then
re-indexes what changed while it ran (versions keep that safe), and deletes the old index. For recovery after the
search cluster lost data, and for backfill. With the embedded MySQL backend there is nothing to rebuild.
"""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, func, select
from tqdm import tqdm

from chat_common import logs
from chat_common.clients.db import make_engine
from chat_common.config import Settings
from chat_common.schema.tables import messages
from chat_common.search import build_search
from chat_common.search.elastic import ElasticsearchSearch
from message_writer.indexing import as_document, indexable_messages

log = logging.getLogger("message_writer.reindex")


def _rows(engine: Engine, batch: int, changed_since: datetime | None = None):
    """Every message (or those changed since a moment) in id order, in batches.

    The one read of ``messages`` across every tenant, on purpose: a rebuild wants them all (on a database
    sharded by application, a scatter read). Each row's chat is joined through its application id.
    """
    last_id = 0
    while True:
        query = indexable_messages().where(messages.c.id > last_id).order_by(messages.c.id).limit(batch)
        if changed_since is not None:
            query = query.where(messages.c.updated_at >= changed_since)
        with engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return
        last_id = rows[-1].id
        yield [as_document(row) for row in rows]


def reindex(search: ElasticsearchSearch, engine: Engine, batch: int = 1000, progress: bool = True) -> dict:
    """Rebuild the index behind the alias; returns figures of the run."""
    started = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=5)  # DB timestamps are naive UTC-ish
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(messages)).scalar_one()
    target = search.new_index_name()
    search.create_index(target, with_alias=False)
    figures = {"index": target, "indexed": 0, "rejected": 0, "caught_up": 0}
    with tqdm(total=total, unit="msg", desc="reindex", disable=not progress) as bar:
        for docs in _rows(engine, batch):
            outcome = search.bulk(docs, index=target)
            if outcome.retry:  # one more try for overloaded shards, then give up loudly
                outcome.rejected += search.bulk(outcome.retry, index=target).rejected
            figures["indexed"] += len(outcome.indexed)
            figures["rejected"] += len(outcome.rejected)
            bar.update(len(docs))
    old = search.swap_alias(target)
    for docs in _rows(engine, batch, changed_since=started):
        figures["caught_up"] += len(search.bulk(docs).indexed)
    for name in old:
        search.client.indices.delete(index=name)
    figures["replaced"] = old
    return figures


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    logs.configure()
    settings = Settings.from_env()
    engine = make_engine(settings.database_url, pool_size=1)
    search = build_search(settings, engine)
    if not isinstance(search, ElasticsearchSearch):
        log.info("search runs on MySQL (ELASTICSEARCH_URL is not set): nothing to rebuild")
        return
    figures = reindex(search, engine, args.batch, progress=not args.no_progress)
    log.info("reindex done: %s", figures)


if __name__ == "__main__":
    main()
