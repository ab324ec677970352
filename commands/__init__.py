"""Deciders (pure: decide and evolve per aggregate), domain errors and password hashing."""
