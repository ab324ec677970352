"""The HTTP gateway: ``create_app(settings)``, routes, auth, rate limits, problem responses, cache.

Nothing imports ``gateway``; it calls ``commands`` to write and ``projections`` queries to read.
"""
