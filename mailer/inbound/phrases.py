"""What mail servers write when they refuse a message, grouped by what it means: the classifier's vocabulary.

Each group is a regular expression over a lower-cased diagnostic on one line. The phrases are the
servers' own words (Postfix, Exim, Sendmail, qmail, Exchange, Gmail, Yahoo, mail.ru and the rest), as
the established bounce classifiers record them too; a phrase belongs to the narrowest group it proves.
"""

from __future__ import annotations

import re


def _group(*phrases: str) -> re.Pattern[str]:
    """One pattern for many phrases; a phrase is a regular expression fragment (spaces match one space)."""
    return re.compile("|".join(f"(?:{phrase})" for phrase in phrases))


# The recipient's mailbox does not exist here.
USER_UNKNOWN = _group(
    r"#5\.1\.1 bad address", r"<[^ ]+> not found", r"<[^ ]+@[^ ]+>\.\.\. blocked by ",
    r"550 address invalid", r"5\.1\.0 address rejected\.", r"account [^ ]+ does not exist at the organization",
    r"address (?:does not exist|not present in directory|unknown)", r"archived recipient",
    r"bad[-_ \t]recipient", r"can't accept user", r"does not exist\.",
    r"destination (?:addresses were unknown|server rejected recipients)",
    r"email address (?:does not exist|could not be found)",
    r"invalid (?:address|mailbox:?|mailbox path|recipient)",
    r"is not (?:a known user|a valid mailbox|an active address at this host)",
    r"mailbox (?:[^ ]+ does not exist|[^ ]+@[^ ]+ unavailable|does not exist|invalid|is (?:inactive|unavailable)"
    r"|not (?:present|found)|unavailable)",
    r"nessun utente simile in questo indirizzo",
    r"no (?:[^ ]+ in name directory|account by that name here|existe (?:dicha persona|ese usuario )"
    r"|mail box available for this user|mailbox (?:by that name is currently available|found)"
    r"|matches to nameserver query|such (?:address here|mailbox|person at this address|recipient|user(?: here)?)"
    r"|thank you rejected: account unavailable:|valid recipients, bye)",
    r"non[- ]?existent user", r"not (?:a valid (?:recipient|user here)|a local address|email addresses)",
    r"rcpt <[^ ]+> does not exist", r"recipient address rejected\. \(in reply to rcpt to command\)",
    r"recipient (?:[^ ]+ was not found in|address rejected: (?:access denied|invalid user|invalid-recipient"
    r"|user [^ ]+ does not exist|user unknown in [^ ]+ table|unknown user)|does not exist(?: on this system)?"
    r"|is not local|not (?:exist|found|ok)|refuses to accept your mail|unknown)",
    r"requested action not taken: mailbox unavailable", r"resolver\.adr\.recipient ?notfound",
    r"said: 550[- ]5\.1\.1 [^ ]+ user unknown ",
    r"sorry, (?:user unknown|badrcptto|no mailbox here by that name|your envelope recipient has been denied)",
    r"that domain or user isn't in my list of allowed rcpthosts",
    r"the (?:email account that you tried to reach does not exist|following recipients was undeliverable"
    r"|user's email name is not found)",
    r"there is no one at this address",
    r"this (?:address no longer accepts mail|email address is wrong or no longer valid"
    r"|recipient is in my badrecipientto list|recipient is not in my validrcptto list|spectator does not exist"
    r"|user doesn'?t have a [^ ]+ account)",
    r"unknown (?:e-?mail address|local[- ]part|mailbox|recipient|user)",
    r"user (?:[^ ]+ was not found|[^ ]+ does not exist|does not exist|missing home directory"
    r"|not (?:active|exist|found|known)|unknown)",
    r"utilisateur inconnu !", r"vdeliver: invalid or unknown virtual user",
    r"your envelope recipient is in my badrcptto list",
)

# The recipient's domain does not exist or has no mail servers.
HOST_UNKNOWN = _group(
    r"domain does not exist", r"domain is not reachable", r"domain must exist", r"host or domain name not found",
    r"host unknown", r"host unreachable", r"mail domain mentioned in email address is unknown",
    r"name or service not known", r"no such domain", r"recipient address rejected: unknown domain name",
    r"recipient domain must exist", r"the account or domain may not exist", r"unknown host",
    r"unroutable address", r"unrouteable address", r"553 [^ ]+ does not exist",
)

# The mailbox has moved and mail is not forwarded.
HAS_MOVED = _group(r" has been replaced by ")

# The domain says it takes no mail at all (a null MX).
NOT_ACCEPTING = _group(
    r"does not accept mail \(nullmx\)", r"host/domain does not accept mail", r"host does not accept mail",
    r"name server: \.: host not found", r"no mx record found for domain=", r"no route for current request",
    r"smtp protocol returned a permanent error",
)

# The mailbox is full or over its quota.
MAILBOX_FULL = _group(
    r"account disabled temporarly for exceeding receiving limits", r"account is (?:temporarily )?over quota",
    r"account is exceeding their quota", r"boite du destinataire pleine", r"delivery failed: over quota",
    r"disc quota exceeded", r"does not have enough space", r"exceeded storage allocation",
    r"exceeding its mailbox quota", r"full mailbox", r"is over disk quota", r"is over quota temporarily",
    r"mail file size exceeds the maximum size allowed for mail delivery", r"mail quota exceeded",
    r"mailbox exceeded the local limit", r"mailbox full", r"mailbox has exceeded its disk space limit",
    r"mailbox is full", r"mailbox over quota", r"mailbox quota usage exceeded", r"mailbox size limit exceeded",
    r"maildir over quota", r"maildir delivery failed: (?:user|domain)disk quota ", r"mailfolder is full",
    r"not enough storage space in", r"over the allowed quota", r"quota exceeded", r"quota violation for",
    r"recipient reached disk quota", r"recipient rejected: mailbox would exceed maximum allowed storage",
    r"the user's space has been used up", r"the user you are trying to reach is over quota",
    r"too much mail data", r"user has exceeded quota, bouncing mail", r"user has too many messages on the server",
    r"user is over (?:the )?quota", r"user over quota", r"was automatically rejected: quota exceeded",
    r"would be over the allowed quota", r"inbox is out of storage space", r"out of storage space",
    r"mailbox exceeds allowed size",
)

# The mailbox is disabled or suspended for now (unpaid, inactive, frozen).
SUSPENDED = _group(
    r" is currently suspended", r" temporary locked", r"boite du destinataire archivee",
    r"email account that you tried to reach is disabled", r"has been suspended", r"invalid/inactive user",
    r"is a deactivated mailbox", r"mailbox currently suspended", r"mailbox is frozen",
    r"mailbox unavailable or access denied", r"recipient rejected: temporarily inactive",
    r"recipient suspend the service", r"this account has been disabled or discontinued",
    r"this mailbox is disabled", r"user suspended", r"vdelivermail: account is locked email bounced",
)

# The message is larger than the recipient's server takes.
TOO_LARGE = _group(
    r"exceeded maximum inbound message size", r"line limit exceeded", r"max message size exceeded",
    r"message file too big", r"message length exceeds administrative limit", r"message size exceeds fixed limit",
    r"message size exceeds fixed maximum message size", r"message size exceeds maximum value",
    r"message too big", r"message too large for this ", r"size limit", r"taille limite du message atteinte",
)

# A limit of the recipient's server other than size.
OVER_LIMIT = _group(r"message header size exceeds limit", r"message too large")

# Too many connections or messages at once.
TOO_MANY = _group(
    r"all available ips are at maximum connection limit", r"connection rate limit exceeded",
    r"exceeds per-domain connection limit for", r"has exceeded the max emails per hour ",
    r"throttling failure: (?:daily message quota exceeded|maximum sending rate exceeded)",
    r"too many connections", r"too many concurrent smtp connections", r"too many errors from your ip",
    r"too many recipients", r"too many smtp sessions for this host", r"trop de connexions, ",
    r"we have already made numerous attempts to deliver this message",
)

# The relay refuses to pass the message on.
RELAY_DENIED = _group(
    r"as a relay", r"insecure mail relay", r"is not permitted to relay through this server without authentication",
    r"mail server requires authentication when attempting to send to a non-local e-mail address",
    r"not a gateway", r"not allowed to relay through this machine", r"not an open relay, so get lost",
    r"not local host", r"relay access denied", r"relay denied", r"relaying mail to ", r"relay not permitted",
    r"relaying denied", r"that domain isn't in my list of allowed rcpthost",
    r"this system is not configured to relay mail", r"unable to relay for", r"we don't handle mail for",
)

# Our sending IP or host is refused: blocklists, reverse DNS, reputation.
BLOCKED = _group(
    r" said: 550 blocked", r"\([^ ]+@[^ ]+:blocked\)", r"access denied\. ip name lookup failed",
    r"access from ip address [^ ]+ blocked",
    r"all mail servers must have a ptr record with a valid reverse dns entry",
    r"bad (?:dns ptr resource record|sender ip address)", r"banned sending ip", r"blacklisted by",
    r"(?:blocked|refused) - see https?://", r"blocked using ", r"can't determine purported responsible address",
    r"cannot (?:find your hostname|resolve your address)",
    r"client host (?:[^ ]+ blocked using|rejected: (?:abus detecte gu_eib_0[24]|cannot find your hostname"
    r"|may not be mail exchanger|was not authenticated))",
    r"confirm this mail server", r"connection (?:dropped|refused by|reset by peer|was dropped by remote host)",
    r"connections (?:not accepted from ip addresses on spamhaus xbl"
    r"|will not be accepted from [^ ]+, because the ip is in spamhaus's list)",
    r"currently sending spam see: ", r"domain (?:[^ ]+ mismatches client ip|does not exist:)",
    r"dns lookup failure: [^ ]+ try again later", r"dnsbl:(?:attrbl|rbl \d+< .+ >_is_blocked)",
    r"dynamic/zombied/spam ips blocked",
    r"email blocked by (?:[^ ]+\.barracudacentral\.org|spamhaus)", r"error: no valid recipients from ",
    r"esmtp not accepting connections", r"extreme bad ip profile", r"fix reverse dns for [^ ]+", r"go away",
    r"helo command rejected:", r"host [^ ]+ refused to talk to me: \d+ blocked", r"host network not allowed",
    r"hosts with dynamic ip", r"http://(?:spf\.pobox\.com/why\.html|www\.spamcop\.net/bl\.)",
    r"invalid ip for sending mail of domain", r"ip \d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3} is blocked by earthlink",
    r"ip/domain reputation problems", r"ips with missing ptr records",
    r"is (?:in a black list(?: at [^ ]+\.)?|in an [^ ]+rbl on [^ ]+"
    r"|not allowed to send (?:mail from|from <[^ ]+> per it's spf record))",
    r"mail server at [^ ]+ is blocked", r"mail from \d+\.\d+\.\d+\.\d refused:",
    r"message from [^ ]+ rejected based on blacklist", r"message was rejected for possible spam/virus content",
    r"messages from [^ ]+ temporarily deferred due to user complaints",
    r"no (?:access from mail server|ptr record found\.)", r"not currently accepting mail from your ip",
    r"part of their network is on our block list",
    r"please (?:get a custom reverse dns name from your isp for your host|inspect your spf settings"
    r"|use the smtp server of your isp)",
    r"ptr record setup", r"rejected because the sending mta or the sender has not passed validation",
    r"rejected due to (?:a poor email reputation score|the sending mta's poor reputation)",
    r"rejecting open proxy",
    r"reverse dns (?:failed|required|lookup for host [^ ]+ failed permanently)",
    r"sender ip (?:address rejected|reverse lookup rejected)",
    r"server access (?:[^ ]+ forbidden by invalid rdns record of your mail server|forbidden by your ip )",
    r"server ip [^ ]+ listed as abusive", r"service not available, closing transmission channel",
    r"service permits \d+ unverifyable sending ips",
    r"smtp error from remote mail server after initial connection:",
    r"sorry, (?:that domain isn'?t in my list of allowed rcpthosts|your remotehost looks suspiciously like spammer)",
    r"spf (?:\(sender policy framework\) domain authentication fail|record|check: fail)",
    r"spf: [^ ]+ is not allowed to send mail\. [a-z0-9]_401",
    r"temporarily deferred due to unexpected volume or user complaints",
    r"the (?:email|domain|ip) [^ ]+ is blacklisted",
    r"this system will not accept messages from servers/devices with no reverse dns",
    r"to submit messages to this e-mail system has been rejected",
    r"too many (?:spams from your ip|unwanted messages have been sent from the following ip address above)",
    r"unresolvable relay host name",
    r"veuillez essayer plus tard\. service refused, please try later\. [0-9a-z_]+(?:103|510)",
    r"was blocked by [^ ]+",
    r"we do not accept mail from (?:dynamic ips|hosts with dynamic ip or generic dns ptr-records)",
    r"you are (?:not allowed to connect|sending spam)",
    r"your (?:email address has been blacklisted|network is temporary blacklisted"
    r"|sender's ip address is listed at [^ ]+\.abuseat\.org|server requires confirmation)",
    r"ip address blacklisted", r"\bblacklisted\b", r"listed (?:on|in) (?:rbl|dnsbl|spamhaus|sorbs|barracuda)",
)

# The sender's address or domain is refused.
SENDER_REJECTED = _group(
    r"access denied \(in reply to mail from command\)", r"access denied \(sender blacklisted\)",
    r"address rejected", r"administrative prohibition", r"batv failed to verify", r"batv validation failure",
    r"backscatter protection detected an invalid or expired email address",
    r"because the sender isn't on the recipient's list of senders to accept mail from", r"bogus mail from",
    r"connections not accepted from servers without a valid sender domain", r"denied \[bouncedeny\]",
    r"denied by secumail valid-address-filter", r"delivery not authorized, message refused",
    r"does not exist e2110", r"domain of sender address ", r"email address is on senderfilterconfig list",
    r"emetteur invalide", r"empty envelope senders not allowed", r"envelope blocked – ",
    r"error: no third-party dsns", r"from: domain is invalid\. please provide a valid from:",
    r"fully qualified email address required", r"invalid domain, see <url:", r"invalid sender",
    r"is not a registered gateway user", r"mail from not owned by user",
    r"message rejected: email address is not verified", r"mx records for ", r"null sender is not allowed",
    r"recipient addresses rejected : access denied", r"recipient not accepted\. \(batv: no tag",
    r"returned mail not accepted here", r"rfc 1035 violation: recursive cname records for",
    r"rule imposed mailbox access for", r"sender address has been blacklisted", r"sender email address rejected",
    r"sender is in my black list", r"sender is spammer", r"sender not pre-approved", r"sender rejected",
    r"sender domain is empty", r"sender verify failed", r"syntax error: empty email address",
    r"the message has been rejected by batv defense", r"this server does not accept mail from",
    r"transaction failed unsigned dsn for", r"unroutable sender address",
    r"you are not allowed to post to this mailing list",
    r"you are sending to/from an address that has been blacklisted",
    r"your access to submit messages to this e-mail system has been rejected",
)
# Phrases that look like a sender refusal but are about the recipient or the IP.
SENDER_REJECTED_NOT = ("5.1.0 address rejected", "recipient address rejected", "sender ip address rejected")

# The recipient's server (or the recipient) filters the message out.
FILTERED = _group(
    r"because the recipient is only accepting mail from specific email addresses", r"bounced address",
    r"due to extended inactivity new mail is not currently being accepted for this mailbox",
    r"has restricted sms e-mail", r"is not accepting any mail", r"message rejected due to user rules",
    r"not found recipient account", r"refused due to recipient preferences", r"resolver\.rst\.notauthorized",
    r"this account is protected by", r"user not found", r"user reject",
    r"we failed to deliver mail because the following address recipient id refuse to receive mail",
    r"you have been blocked by the recipient",
)

# Judged to be spam.
SPAM = _group(
    r"\"the mail server detected your message as spam and has prevented delivery\.\"",
    r"(?:\d\.\d\.\d|\d{3}) spam$", r"554 5\.7\.0 reject, id=\d+", r"appears to be unsolicited",
    r"blacklisted url in message", r"block for spam", r"blocked by (?:policy: no spam please|spamassassin)",
    r"blocked for abuse\. see http://att\.net/blocks", r"bulk email",
    r"considered unsolicited bulk e-mail \(spam\) by our mail filters", r"content filter rejection",
    r"cyberoam anti spam engine has identified this email as a bulk email", r"denied due to spam list",
    r"greylisted.?. please try again in", r"high probability of spam",
    r"https?://(?:www\.spamhaus\.org|dsbl\.org|mail\.163\.com/help/help_spam_16\.htm)",
    r"listed in work\.drbl\.imedia\.ru",
    r"mail (?:appears to be unsolicited|content denied|rejete\. mail rejected\. [0-9a-z_]+506)",
    r"may consider spam",
    r"message (?:considered as spam or virus|contains spam or virus|content rejected|detected as spam"
    r"|filtered|is being rejected as it seems to be a spam|looks like spam"
    r"|refused by (?:mailmarshal spamprofiler|trustwave seg spamprofiler)"
    r"|rejected (?:as spam|because of unacceptable content|due to suspected spam content|for policy reasons))",
    r"our (?:email server thinks this email is spam|filters rate at and above \d+ percent probability of being spam"
    r"|system has detected that this message is)",
    r"probable spam", r"reject bulk\.advertising",
    r"rejected(?:: spamassassin score | by [^ ]+ \(spam\)| due to spam (?:url in )?(?:classification|content))",
    r"rejecting (?:banned|mail) content", r"related to content with spam-like characteristics",
    r"rule imposed as [^ ]+ is blacklisted on", r"sender domain listed at [^ ]+",
    r"sending address not accepted due to spam filter",
    r"spam (?:[^ ]+ exceeded|blocked|check|content matched|detected|email|email not accepted"
    r"|message rejected\.|not accepted|refused|rejection|reporting address|score )",
    r"spambouncer identified spam", r"spamming not allowed", r"too much spam\.",
    r"the email message was detected as spam",
    r"the message (?:has been rejected by spam filtering engine|was rejected due to classification as bulk mail)",
    r"the content of this message looked like spam",
    r"this (?:e-mail|mail) (?:cannot be forwarded because it was detected as spam|is classified as spam and is rejected)",
    r"this message (?:appears to be spam|has been (?:identified as spam|scored as spam with a probability)"
    r"|scored [^ ]+ spam points|was classified as spam|was rejected by recurrent pattern detection system)",
    r"transaction failed spam message not queued", r"we dont accept spam", r"you're using a mass mailer",
    r"your (?:email (?:appears similar to spam we have received before|breaches local uribl policy"
    r"|had spam-like |is (?:considered|probably) spam|was detected as spam)"
    r"|message (?:as spam and has prevented delivery|has been (?:temporarily blocked by our filter"
    r"|rejected because it appears to be spam)|has triggered a spam block|may contain the spam contents"
    r"|failed several antispam checks))",
)

VIRUS = _group(
    r"it has a potentially executable attachment",
    r"the message was rejected because it contains prohibited virus or spam content",
    r"this form of attachment has been used by recent viruses or other malware", r"virus detected",
    r"your message was infected with a virus",
)

POLICY = _group(
    r"an illegal attachment on your message", r"because the recipient is not accepting mail with ",
    r"by non-member to a members-only list", r"closed mailing list", r"denied by policy", r"dmarc policy",
    r"email not accepted for policy reasons", r"email rejected due to security policies",
    r"header are not accepted", r"header error", r"local policy violation",
    r"message bounced due to organizational settings", r"message given low priority",
    r"message not accepted for policy reasons", r"message rejected due to local policy",
    r"messages with multiple addresses", r"rejected for policy reasons", r"protocol violation",
    r"the email address used to send your message is not subscribed to this group",
    r"the message was rejected by organization policy",
    r"this message was blocked because its content presents a potential",
    r"we do not accept messages containing images or other attachments",
    r"you have exceeded the (?:the )?allowable number of posts without solving a captcha",
)

# Authentication of the sender (SPF, DKIM, SMTP AUTH) failed or is required.
AUTHENTICATION = _group(
    r"account not subscribed to ses",
    r"authentication (?:credentials invalid|failure|failed; server [^ ]+ said:|required"
    r"|turned on in your email client)",
    r"authentification requise.+[0-9a-z_]+402", r"codes? d'? *authentification invalide.+[0-9a-z_]+305",
    r"domain [^ ]+ is a dead domain", r"executable files are not allowed in compressed files",
    r"insecure mail relay", r"recipient address rejected: access denied",
    r"sorry, you don'?t authenticate or the domain isn'?t in my list of allowed rcpthosts",
    r"tls required but not supported", r"unauthenticated senders not allowed",
    r"user [^ ]+ is not authorized to perform ses:sendrawemail on resource",
    r"you are not authorized to send mail, authentication is required", r"verification failure",
)

SERVER_ERROR = _group(
    r"aliasing/forwarding loop broken", r"can't create user output file", r"could not load drd for domain",
    r"internal error reading data", r"internal server error: operation now in progress",
    r"interrupted system call", r"it encountered an error while being processed", r"it would create a mail loop",
    r"local configuration error", r"local error in processing", r"loop was found in the mail exchanger",
    r"loops back to myself", r"queue file write error", r"mail system configuration error",
    r"remote server is misconfigured", r"server configuration error", r"service currently unavailable",
    r"system config error", r"temporary local problem", r"timeout waiting for input", r"transaction failed",
)

SERVER_FULL = _group(r"mail system full", r"requested mail action aborted: exceeded storage allocation")

ROUTING = _group(
    r"could not connect and send the mail to", r"dns records for the destination computer could not be found",
    r"hop count exceeded - possible mail loop", r"host is unreachable", r"host name lookup failure",
    r"host not found, try again", r"mail forwarding loop for ", r"malformed (?:or unexpected )?name server reply",
    r"maximum forwarding loop count exceeded", r"message looping", r"message probably in a routing loop",
    r"no route to host", r"too many hops", r"unable to resolve route ", r"unrouteable mail domain",
)

EXPIRED = _group(
    r"connection timed out", r"could not find a gateway for", r"delivery attempts will continue to be",
    r"delivery time expired", r"failed to deliver to domain ", r"giving up on", r"have been failing for a long time",
    r"has been delayed", r"it has not been collected after", r"message expired after sitting in queue for",
    r"message expired, connection refulsed", r"message timed out",
    r"retry time not reached for any host after a long failure period", r"server did not respond",
    r"this message has been in the queue too long", r"unable to deliver message after multiple retries",
    r"was not reachable within the allowed queue period", r"your message could not be delivered for more than",
)

CONTENT = _group(
    r"header size exceeds maximum permitted", r"improper use of 8-bit data in message header",
    r"message header size, or recipient list, exceeds policy limit",
    r"message mime complexity exceeds the policy maximum", r"routing loop detected -- too many received: headers",
    r"this message contain (?:invalid mime headers|improperly-formatted binary content"
    r"|text that uses unnecessary base64 encoding)",
)

MAILER_ERROR = _group(
    r"^procmail: ", r"bin/(?:procmail|maildrop)", r"command (?:failed: |died with status \d+|output:)",
    r"exit \d+", r"mailer error", r"pipe to \|/[^ ]+", r"x-unix; \d+",
)

VACATION = _group(r"i am away on vacation", r"i am away until", r"i am out of the office",
                  r"i will be traveling for work on")
