"""The wire format, sans-IO: envelopes, codecs, compression, and one handler per protocol."""
