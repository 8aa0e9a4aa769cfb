"""Staff pages under /admin: log in, campaigns and one-offs, follow-up wording, inquiries, subscribers.

`base` holds the blueprint, sessions, login and page helpers; each other module registers the routes of
one part of the staff pages on that blueprint when imported here.
"""

from mailer.web.admin import campaigns, imports, inquiries, subscribers, wording
from mailer.web.admin.base import CAMPAIGNS_PER_PAGE, LOGIN_ATTEMPTS, MAX_ID, blueprint
from mailer.web.admin.campaigns import next_send_time

__all__ = ["CAMPAIGNS_PER_PAGE", "LOGIN_ATTEMPTS", "MAX_ID", "blueprint", "campaigns", "imports", "inquiries",
           "next_send_time", "subscribers", "wording"]
