"""The Aspia relay: key pool, pairing, router link and peer listener (spec §7)."""
