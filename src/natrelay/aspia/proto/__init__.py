"""Generated protobuf modules for the Aspia wire messages (package ``proto``).

The ``.proto`` sources sit next to the generated code so a field-number change is reviewed
together with its effect; ``generate.sh`` rebuilds the ``*_pb2`` modules and stubs.
"""
