"""Pure data: the event envelope, the events and commands of each category, the registry."""
