"""Test infrastructure shared by tests/ and bench/: the emulator, the chaos bucket, builders, job runners."""
