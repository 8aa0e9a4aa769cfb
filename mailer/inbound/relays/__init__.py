"""Relay webhooks: Postmark, Mailgun, SendGrid and Amazon SES (through SNS), verified and applied once each."""
