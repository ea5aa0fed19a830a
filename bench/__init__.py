"""mcp-proxy's benchmark harness: `python -m bench run SCENARIO` (see bench/README.md)."""
