"""The Aspia relay/router family (wire-compatible with Aspia 2.7.0).

Spec: shared/specs/aspia-relay-router-protocol.md.
"""
