"""lkedge host tools (CPython only): relay, board emulator, deploy, CLI, benchmarks."""
import os

# The checkout these tools run from: they read its boards/, firmware/ and lib/.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
