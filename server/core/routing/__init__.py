"""Routing strategies and resilience: who to try, in which order, and how to recover."""
