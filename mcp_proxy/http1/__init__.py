"""The HTTP/1 engine."""
