"""Inbound: what comes back (bounces, replies, relay webhooks, bookings), read and applied."""
