"""The voiceorch benchmark: client-side latency of the real server with its embedded models,
the floors of each model alone, and the orchestration's cost under many concurrent sessions.

Run it with ``python -m bench`` (``--quick`` for a short run); see bench/README.md.
"""
