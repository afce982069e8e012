"""Store implementations (adapters of :class:`copydesk.store.Store`)."""
