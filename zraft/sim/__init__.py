"""Deterministic simulation of a Raft cluster: the real core, a seeded scheduler, fault
injection and invariant checks. See simulator.py for the model and checker.py for the rules."""
