"""Test and benchmark doubles of the outside world; not used by the server itself."""
