"""Response caching: exact and semantic caches, their tiers, and request coalescing."""
