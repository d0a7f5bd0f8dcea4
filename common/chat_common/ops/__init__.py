"""One-shot commands an install or upgrade runs: migrations, database grants, broker users, queue and
token migrations."""
