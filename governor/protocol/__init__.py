"""The Redis protocol: every key, every Lua script (``lua/``), the client API and the
connections, shared by masters, workers and producers. Depends on nothing else in governor
but the basics (config, units, untrusted)."""
