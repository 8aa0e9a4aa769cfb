"""mailer: newsletters from a clinic blog, consented follow-ups, unsubscribes that hold."""
