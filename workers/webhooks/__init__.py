"""Webhooks: endpoints registered per project, signed deliveries of task transitions."""
