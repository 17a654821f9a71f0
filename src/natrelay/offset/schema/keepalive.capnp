# Keepalive layer (spec §6): every secure-channel user payload is one KaMessage.
@0x823f4682ee6c4acb;

struct KaMessage {
  union {
    keepAlive @0 :Void;
    message @1 :Data;
  }
}
