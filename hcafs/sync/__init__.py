"""Background work: the sync engine, staging and the DRS import queue's flusher."""
