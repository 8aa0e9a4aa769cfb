"""Outbound: the outbox, the delivery engine and the transports that hand messages to a relay."""
