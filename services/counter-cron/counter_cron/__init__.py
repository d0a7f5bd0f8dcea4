"""The count sync: brings ``chats_count`` and ``messages_count`` up to date for what changed since the last run."""
