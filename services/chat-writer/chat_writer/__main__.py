"""`python -m chat_writer`: consume the chats queue until SIGTERM."""

from chat_common.writing.writer import run_writer
from chat_writer.handler import ChatBatchWriter

if __name__ == "__main__":
    run_writer(lambda topology: topology.chats, ChatBatchWriter)
