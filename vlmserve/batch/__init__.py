"""OpenAI's Batch API on vlmserve: files, batches, a durable store and the worker that runs them.

``store`` keeps files, batches and per-line state in SQLite; ``files`` keeps file bodies on disk;
``lines`` parses an input file and runs one line through the chat handler (shared with the
offline ``vlmserve batch`` command); ``runner`` is the server's background worker; ``objects``
renders OpenAI's JSON shapes.
"""
