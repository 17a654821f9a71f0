"""The Offset relay family (wire-compatible with Offset v0.1.11).

Spec: shared/specs/offset-relay-protocol.md. Sans-IO cores (framing, messages,
channel, keepalive, relay pairing) with thin asyncio shells (server, client).
"""
