"""mcp-proxy: an L7 reverse proxy for services spread across on-prem, private and public clouds.

How this works (one request):

    http1/        the project's own HTTP/1 engine (it imports nothing from upstream/ or the
                  pipeline): client.py ClientConnection (asyncio Protocol + llhttp; reading
                  states IDLE/HEAD/BODY/DISCARD/DONE, limits, body pace, lingering close),
                  writer.py the one writer to a client (framing, keep-alive, send pace),
                  upstream.py UpstreamConnection (IDLE/SENT/BODY/DONE/CLOSED; a response ends
                  exactly where its framing says), head.py head checks, path.py the path
                  normaliser, request.py, body.py, deadline.py, wire.py, settings.py,
                  callbacks.py (a bug raised in a parser callback: logged, a 500),
                  tunnel.py the byte pump of an upgraded connection (back-pressure, half-close)
    pipeline.py   the phases of one request, run by one driver: ROUTE -> AUTH -> BUFFER ->
                  ADMIT -> PICK -> CONNECT -> SEND -> RELAY -> DONE; every failure through
                  one `fail` (retry as a new attempt, or `_answer`: errors become HTTP there)
    flight.py     Flight (one request's state) and Attempt (one try on one backend)
    tunnels.py    WebSocket: the upgrade head, max_tunnels, the hand-over at the backend's 101
    headers.py    what happens to header fields on the way (hop-by-hop, X-Forwarded-*, Via)
    runtime.py    Runtime: everything computed once from one config; RuntimeRef.current
    route.py      Route: a route's candidates, tiers or split, mirror; pick() is the one choice
    routing.py    Router: first match wins (path prefix, methods, host, headers)
    auth/         JWT verification (pyjwt) with a verified-token cache; key sets: keys (file,
                  env; what a set may hold), jwks_url (fetched), sources (which one a config names)
    admission/    priority queue (pure) and its asyncio gate
    upstream/     rtt (peak-EWMA), balancer (lowest_rtt, round_robin, least_request), health
                  (hysteresis, outlier ejection), health_check (probe loops), dns (aiodns
                  refresh), members (a host name's addresses -> one backend each), pool
                  (idle keep-alive connections per backend), backend (one backend's live
                  state), retry (budget, and when a retry is allowed), tls
                  (one verifying client context per pool, its files, session resumption), tiers
                  (failover tiers: Envoy's priority load, spill when full, slow start, panic;
                  `choose` is the PICK phase's one decision)
    tls/          the public listener's TLS: certs (pairs checked: key, chain order, names,
                  expiry), contexts (one per certificate, chosen by SNI), listener (each
                  connection's handshake through the loop's TLS protocol, counted, bounded;
                  only a finished one creates the client connection), session (what a request
                  learns: version, verified client identity), throwaway (demo/bench CA)
    reload.py     validate, build, warm, swap one reference
    server.py     listeners, start-up and graceful shutdown;  admin.py  the admin endpoints
    explain.py    /admin/explain: the request path's own decisions, run dry
    metrics.py    every Prometheus collector; tally.py  per-request counts read at scrape time
    build.py      which modules run compiled (setup.py: MCP_PROXY_COMPILE=1 compiles the
                  request path with mypyc);  cli.py  commands
    demo*.py      `mcp-proxy demo`: demo.py the tour's sections (Demo), demo_world.py its pools,
                  backends, key and config, demo_traffic.py requests driven and the tables read
                  from them, demo_tiers.py section 5, demo_stream.py its SSE route, demo_cli.py
                  the command (arguments, uvloop, Ctrl-C, exit code)
    config/       model (frozen, typed), load (YAML with line numbers), problems (pydantic's
                  errors as one line per key path), check (cross-references),
                  keyfiles/tlsfiles (the files a config names: JWKS, pool TLS certificates)
    workers/      `workers: N | auto`: supervisor, zygote-forked workers on one SO_REUSEPORT
                  port, IPC, two-phase group reload, merged admin view (its __init__ says how)

Decisions live in pure, synchronous objects (router, balancer, health state, admission queue,
retry budget) with the clock and random generator passed in; the asyncio layer carries them out.
"""

__version__ = "0.1.0"
