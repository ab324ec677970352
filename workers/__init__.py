"""The task worker pool: task handlers, storage of results (``workers.blobs``), webhooks."""
