"""Byte-oriented ordered stores: in-memory and RocksDB (rocksdict)."""
