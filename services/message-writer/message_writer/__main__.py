"""`python -m message_writer`: consume the messages queue until SIGTERM."""

from chat_common.writing.writer import run_writer
from message_writer.handler import MessageBatchWriter

if __name__ == "__main__":
    run_writer(
        lambda topology: topology.messages,
        MessageBatchWriter.with_search,
        MessageBatchWriter.drain_search_backlog,
        announces=True,  # committed rows go to the API's live streams (chat_common.wire.announcements)
    )
