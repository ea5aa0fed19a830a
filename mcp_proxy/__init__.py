"""mcp-proxy: an L7 reverse proxy for services spread across on-prem, private and public clouds.

How this works (one request):

    client.py     ClientConnection (asyncio Protocol + llhttp) parses the head, enforces limits
    pipeline.py   dispatch(request): snapshot -> route -> token -> admission -> proxy -> record
    runtime.py    Runtime: everything computed once from one config; RuntimeRef.current
    routing.py    Router: first match wins (path prefix, methods, host, headers)
    auth/         JWT verification (pyjwt) with a verified-token cache; key sets (file/URL/env)
    admission/    priority queue (pure) and its asyncio gate
    upstream/     rtt (peak-EWMA), balancer (lowest_rtt, round_robin, least_request), health
                  (hysteresis, outlier ejection), health_check (probe loops), dns (aiodns
                  refresh), pool (keep-alive connections, llhttp response parser), backend
                  (one backend's live state), retry (budget), forward (headers, streaming
                  both ways, timeouts, retries)
    reload.py     validate, build, warm, swap one reference
    server.py     listeners, start-up and graceful shutdown;  admin.py  the admin endpoints
    metrics.py    every Prometheus collector; tally.py  per-request counts read at scrape time
    deadline.py   a deadline moved by float stores (one lazily re-armed timer per connection)
    build.py      which modules run compiled (setup.py: MCP_PROXY_COMPILE=1 compiles the
                  request path with mypyc);  demo.py  `mcp-proxy demo`;  cli.py  commands
    config/       model (frozen, typed), load (YAML with line numbers), check (cross-references)

Decisions live in pure, synchronous objects (router, balancer, health state, admission queue,
retry budget) with the clock and random generator passed in; the asyncio layer carries them out.
"""

__version__ = "0.1.0"
