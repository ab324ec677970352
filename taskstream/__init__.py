"""The composition root: settings, CLI, the embedded dev stack, wiring."""
