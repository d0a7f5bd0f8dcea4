"""The chat-writer: applies chat creates and renames from the chats queue to MySQL in batches."""
