# Secure-channel messages (spec §4.2, §5): handshake, rekey and the encrypted frame's plaintext.
@0x90173326907f0c17;

using Common = import "common.capnp";

struct ExchangeRandNonce {
  randNonce @0 :Common.RandValue;
  srcPublicKey @1 :Common.PublicKey;
  optDestPublicKey :union {
    empty @2 :Void;
    publicKey @3 :Common.PublicKey;
  }
}

struct ExchangeDh {
  dhPublicKey @0 :Common.DhPublicKey;
  randNonce @1 :Common.RandValue;
  keySalt @2 :Common.Salt;
  signature @3 :Common.Signature;
}

struct Rekey {
  dhPublicKey @0 :Common.DhPublicKey;
  keySalt @1 :Common.Salt;
}

struct ChannelContent {
  union {
    rekey @0 :Rekey;
    user @1 :Data;
  }
}

struct ChannelMessage {
  randPadding @0 :Data;
  content @1 :ChannelContent;
}
