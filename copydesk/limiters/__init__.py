"""Flow control implementations (adapters of :class:`copydesk.flow.FlowControl`)."""
