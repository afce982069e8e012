"""Dispatch engines (adapters of :class:`copydesk.queue.Queue`)."""
