"""Built-in providers. Each module exposes ``create(name, config, settings) -> Provider``."""
