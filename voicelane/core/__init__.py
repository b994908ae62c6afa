"""The lane's transport-free core, shared by the sidecar and the model-side gate.

Scheduling, single-flight and its broadcast, the result cache, the token bucket, the
guardian's decisions, routing, request keys, circuits and the gate's call headers: pure
policy and asyncio plumbing, with no HTTP server or client and no metrics library. The
shells (voicelane.sidecar, voicelane.gate) bring the transport and the Prometheus metrics;
an import-linter contract keeps aiohttp and prometheus_client out of this package.
"""
