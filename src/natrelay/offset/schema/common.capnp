# Shared value types of the Offset wire protocol (spec §4.2), with the original's field ordinals.
# A fixed-size byte value B is stored as big-endian 8-byte limbs: x_i = B[8i .. 8i+8] (spec §4.3).
@0xc6433b6032ad389c;

struct Buffer128 {
  x0 @0 :UInt64;
  x1 @1 :UInt64;
}

struct Buffer256 {
  x0 @0 :UInt64;
  x1 @1 :UInt64;
  x2 @2 :UInt64;
  x3 @3 :UInt64;
}

struct Buffer512 {
  x0 @0 :UInt64;
  x1 @1 :UInt64;
  x2 @2 :UInt64;
  x3 @3 :UInt64;
  x4 @4 :UInt64;
  x5 @5 :UInt64;
  x6 @6 :UInt64;
  x7 @7 :UInt64;
}

struct PublicKey {
  inner @0 :Buffer256;
}

struct DhPublicKey {
  inner @0 :Buffer256;
}

struct Salt {
  inner @0 :Buffer256;
}

struct Signature {
  inner @0 :Buffer512;
}

struct RandValue {
  inner @0 :Buffer128;
}

# Not used by the relay wire protocol; kept so the schema mirrors the original's common types.
struct NetAddress {
  address @0 :Text;
}

struct RelayAddress {
  publicKey @0 :PublicKey;
  address @1 :NetAddress;
}
