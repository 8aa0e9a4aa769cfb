"""Sequences: inquiries and their follow-up sequences."""
