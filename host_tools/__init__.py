"""lkedge host tools (CPython only): relay, board emulator, deploy, CLI, benchmarks."""
