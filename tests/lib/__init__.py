"""Host-only tests of lib/; a package so their basenames may repeat tests/device/ ones."""
