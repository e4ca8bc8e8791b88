"""The search service's routers, one per resource: searches, items, and the service itself
(health, statistics, metrics, the web page)."""
