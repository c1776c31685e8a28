"""The lkedge relay (spec/LINK.md): router.py (sans-I/O routing core), server.py (asyncio
listeners: TCP/TLS, WebSocket, serial, HTTP health/metrics), auth.py (LiveKit tokens),
metrics.py (Prometheus counters), command.py (`lkedge relay`)."""
