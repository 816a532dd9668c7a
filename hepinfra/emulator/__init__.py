"""The local hep.gg: a faithful emulator of the three public hep.gg APIs (see docs/emulator.md)."""
