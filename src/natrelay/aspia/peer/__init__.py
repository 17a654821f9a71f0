"""The Aspia peers: a Host that exposes a TCP service and a Client that reaches it.

Both talk to the router over a channel of their own (flow A for the host, pinned to the router's
key; flow C for the client, SRP on top of the same pin), meet on a relay with the credentials of
a ``ConnectionOffer`` (spec §8.3), authenticate end to end with SRP against the host's users, and
then carry one TCP byte stream, half-close included, inside the encrypted host-client channel.
"""
