"""A deterministic whole-cluster simulation (see docs/chaos.md, "Deterministic simulation")."""
