# Relay protocol messages (spec §4.2, §7), carried as keepalive-level payloads.
@0xb3e002d480e7e419;

using Common = import "common.capnp";

struct InitConnection {
  union {
    listen @0 :Void;
    accept @1 :Common.PublicKey;
    connect @2 :Common.PublicKey;
  }
}

struct RejectConnection {
  publicKey @0 :Common.PublicKey;
}

struct IncomingConnection {
  publicKey @0 :Common.PublicKey;
}
