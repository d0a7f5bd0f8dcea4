"""The message-writer: applies message creates and edits from the messages queue to MySQL (and the search index)."""
