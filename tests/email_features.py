"""What an email's HTML uses, and the features mailbox providers do not support (from caniemail.com's data).

`inventory(html)` lists every feature the HTML uses as short strings ("property:height",
"selector:.a:hover", "element:video", ...), leaving out what only Outlook for Windows reads (the
content of <!--[if mso]> comments). UNSUPPORTED maps each caniemail feature that at least one of the
clients below does not support at all to a pattern over those strings.

The table was taken from the npm package caniemail 2.0.2 (its data last updated 2026-05-13): every
feature whose latest test result is "n" in one of Gmail (web, iOS, Android), Apple Mail (macOS, iOS),
Outlook.com or Yahoo (web, iOS, Android). Partial support ("a") is not listed: those features work
with limits that the layout respects (e.g. margins, @media, border-radius). Kept here, so the test
needs no network; refresh it from a newer caniemail when one comes out.
"""

from __future__ import annotations

import logging
import re

import cssutils
import lxml.html
from lxml import etree

# slug: (pattern that must not match any inventory string, the clients that do not support it)
UNSUPPORTED: dict[str, tuple[str, str]] = {
    "amp": (r"attribute:(⚡4email|amp4email|⚡)", "Apple Mail, Outlook.com"),
    "css-accent-color": (r"property:accent-color", "Gmail, Outlook.com, Yahoo"),
    "css-align-items": (r"property:align-items", "Gmail, Yahoo"),
    "css-animation": (r"property:animation(-.*)?", "Gmail, Outlook.com, Yahoo"),
    "css-aspect-ratio": (r"property:aspect-ratio", "Gmail, Outlook.com, Yahoo"),
    "css-at-font-face": (r"at-rule:font-face", "Gmail, Outlook.com, Yahoo"),
    "css-at-import": (r"at-rule:import", "Gmail, Outlook.com, Yahoo"),
    "css-at-keyframes": (r"at-rule:(-webkit-)?keyframes", "Gmail, Outlook.com, Yahoo iOS and Android"),
    "css-at-media-device-pixel-ratio": (r"media:.*device-pixel-ratio.*", "Gmail, Yahoo"),
    "css-at-media-hover": (r"media:.*\((any-)?hover\b.*", "Gmail, Yahoo"),
    "css-at-media-orientation": (r"media:.*orientation.*", "Gmail iOS, Yahoo"),
    "css-at-media-prefers-color-scheme": (r"media:.*prefers-color-scheme.*", "Gmail, Yahoo"),
    "css-at-media-prefers-reduced-motion": (r"media:.*prefers-reduced-motion.*", "Gmail, Yahoo"),
    "css-at-supports": (r"at-rule:supports", "Gmail, Outlook.com"),
    "css-backdrop-filter": (r"property:backdrop-filter", "Gmail, Outlook.com, Yahoo"),
    "css-background-blend-mode": (r"property:background-blend-mode", "Yahoo"),
    "css-background-clip": (r"property:background-clip", "Yahoo"),
    "css-background-origin": (r"property:background-origin", "Yahoo"),
    "css-block-inline-size": (r"property:(block|inline)-size", "Gmail, Outlook.com, Yahoo"),
    "css-border-image": (r"property:border-image(-.*)?", "Gmail, Outlook.com, Yahoo"),
    "css-border-inline-block-individual": (r"property:border-(inline|block)-(color|style|width|start|end)",
                                           "Gmail, Outlook.com, Yahoo"),
    "css-border-inline-block-longhand": (r"property:border-(inline|block)-(start|end)-(color|style|width)",
                                         "Gmail, Outlook.com, Yahoo"),
    "css-border-inline-block": (r"property:border-(inline|block)", "Gmail, Apple Mail macOS, Outlook.com, Yahoo"),
    "css-border-radius-logical": (r"property:border-(start|end)-(start|end)-radius",
                                  "Gmail, Apple Mail macOS, Outlook.com, Yahoo"),
    "css-box-shadow": (r"property:box-shadow", "Gmail web, Yahoo"),
    "css-box-sizing": (r"property:box-sizing", "Yahoo"),
    "css-clip-path": (r"property:clip-path", "Gmail, Outlook.com, Yahoo"),
    "css-color-scheme": (r"property:color-scheme", "Gmail, Outlook.com, Yahoo"),
    "css-column-count": (r"property:column-count", "Yahoo"),
    "css-column-layout-properties": (r"property:(columns|column-(count|fill|gap|rule.*|span|width))", "Yahoo"),
    "css-conic-gradient": (r"value:[^:]+:.*conic-gradient\(.*", "Gmail, Outlook.com, Yahoo"),
    "css-cursor": (r"property:cursor", "Gmail, Apple Mail iOS, Outlook.com, Yahoo iOS"),
    "css-empty-cells": (r"property:empty-cells", "Yahoo iOS and Android"),
    "css-filter": (r"property:filter", "Gmail, Outlook.com, Yahoo"),
    "css-flex-direction": (r"property:flex-direction", "Gmail, Yahoo"),
    "css-flex-wrap": (r"property:flex-wrap", "Gmail, Yahoo"),
    "css-font-kerning": (r"property:font-kerning", "Yahoo"),
    "css-font-stretch": (r"property:font-stretch", "Gmail Android, Yahoo"),
    "css-function-clamp": (r"value:[^:]+:.*\bclamp\(.*", "Outlook.com, Yahoo"),
    "css-function-light-dark": (r"value:[^:]+:.*\blight-dark\(.*", "Gmail, Outlook.com, Yahoo web and iOS"),
    "css-function-max": (r"value:[^:]+:.*\bmax\(.*", "Outlook.com, Yahoo"),
    "css-function-min": (r"value:[^:]+:.*\bmin\(.*", "Outlook.com, Yahoo"),
    "css-gap": (r"property:(gap|row-gap|column-gap)", "Yahoo"),
    "css-grid-template": (r"property:grid-template(-.*)?", "Gmail, Outlook.com, Yahoo"),
    "css-height": (r"property:height", "Yahoo"),
    "css-hyphenate-character": (r"property:hyphenate-character", "Gmail, Outlook.com, Yahoo"),
    "css-hyphenate-limit-chars": (r"property:hyphenate-limit-chars", "all nine"),
    "css-hyphens": (r"property:hyphens", "Gmail, Outlook.com, Yahoo"),
    "css-inert-attribute": (r"attribute:inert", "Gmail, Outlook.com, Yahoo"),
    "css-inline-size": (r"property:inline-size", "all nine"),
    "css-inset": (r"property:inset(-.*)?", "Gmail, Outlook.com, Yahoo"),
    "css-intrinsic-size": (r"value:[^:]+:.*\b(fit-content|min-content|max-content)\b.*", "Yahoo"),
    "css-justify-content": (r"property:justify-content", "Gmail, Yahoo"),
    "css-left-right-top-bottom": (r"property:(left|right|top|bottom)", "Gmail, Yahoo"),
    "css-linear-gradient": (r"value:[^:]+:.*linear-gradient\(.*", "Outlook.com, Yahoo"),
    "css-list-style-image": (r"property:list-style-image", "Gmail, Outlook.com, Yahoo"),
    "css-margin-block-start-end": (r"property:margin-block-(start|end)", "Gmail, Apple Mail iOS, Outlook.com, Yahoo"),
    "css-margin-inline-block": (r"property:margin-(inline|block)", "Gmail, Apple Mail iOS, Outlook.com, Yahoo"),
    "css-margin-inline-start-end": (r"property:margin-inline-(start|end)", "Gmail, Apple Mail iOS, Outlook.com, Yahoo"),
    "css-mask-image": (r"property:(-webkit-)?mask(-image)?", "Gmail, Outlook.com, Yahoo"),
    "css-max-block-size": (r"property:max-block-size", "Gmail, Outlook.com, Yahoo"),
    "css-max-inline-size": (r"property:max-inline-size", "Gmail, Outlook.com, Yahoo"),
    "css-min-block-size": (r"property:min-block-size", "Gmail, Outlook.com, Yahoo"),
    "css-min-inline-size": (r"property:min-inline-size", "Gmail, Outlook.com, Yahoo"),
    "css-mix-blend-mode": (r"property:mix-blend-mode", "Yahoo"),
    "css-modern-color": (r"value:[^:]+:.*\b(lch|oklch|lab|oklab)\(.*", "Gmail, Outlook.com, Yahoo"),
    "css-nesting": (r"selector:.*&.*", "Gmail, Outlook.com, Yahoo"),
    "css-object-fit": (r"property:object-fit", "Yahoo"),
    "css-object-position": (r"property:object-position", "Yahoo"),
    "css-orphans": (r"property:orphans", "Gmail, Yahoo"),
    "css-outline-offset": (r"property:outline-offset", "Gmail, Outlook.com, Yahoo"),
    "css-overflow-wrap": (r"property:overflow-wrap", "Gmail, Outlook.com, Yahoo"),
    "css-padding-block-start-end": (r"property:padding-block-(start|end)", "Gmail, Apple Mail iOS, Outlook.com, Yahoo"),
    "css-padding-inline-block": (r"property:padding-(inline|block)", "Gmail, Apple Mail iOS, Outlook.com, Yahoo"),
    "css-padding-inline-start-end": (r"property:padding-inline-(start|end)", "Gmail, Apple Mail iOS, Outlook.com, Yahoo"),
    "css-position": (r"property:position", "Gmail"),
    "css-pseudo-class-active": (r"selector:.*:active\b.*", "Gmail, Apple Mail"),
    "css-pseudo-class-checked": (r"selector:.*:checked\b.*", "Gmail"),
    "css-pseudo-class-default": (r"selector:.*:default\b.*", "Gmail"),
    "css-pseudo-class-first-child": (r"selector:.*:first-child\b.*", "Gmail"),
    "css-pseudo-class-first-of-type": (r"selector:.*:first-of-type\b.*", "Gmail"),
    "css-pseudo-class-focus-visible": (r"selector:.*:focus-visible\b.*", "Gmail"),
    "css-pseudo-class-focus-within": (r"selector:.*:focus-within\b.*", "Gmail, Outlook.com"),
    "css-pseudo-class-focus": (r"selector:.*:focus\b.*", "Gmail, Apple Mail"),
    "css-pseudo-class-has": (r"selector:.*:has\(.*", "Gmail, Outlook.com, Yahoo"),
    "css-pseudo-class-hover": (r"selector:.*:hover\b.*", "Gmail iOS"),
    "css-pseudo-class-lang": (r"selector:.*:lang\(.*", "Gmail, Outlook.com, Yahoo"),
    "css-pseudo-class-last-child": (r"selector:.*:last-child\b.*", "Gmail"),
    "css-pseudo-class-last-of-type": (r"selector:.*:last-of-type\b.*", "Gmail"),
    "css-pseudo-class-link": (r"selector:.*:link\b.*", "Gmail"),
    "css-pseudo-class-not": (r"selector:.*:not\(.*", "Gmail, Outlook.com, Yahoo"),
    "css-pseudo-class-nth-child": (r"selector:.*:nth-child\(.*", "Gmail, Outlook.com, Yahoo"),
    "css-pseudo-class-nth-last-child": (r"selector:.*:nth-last-child\(.*", "Gmail, Outlook.com, Yahoo"),
    "css-pseudo-class-nth-last-of-type": (r"selector:.*:nth-last-of-type\(.*", "Gmail, Outlook.com, Yahoo"),
    "css-pseudo-class-nth-of-type": (r"selector:.*:nth-of-type\(.*", "Gmail, Outlook.com, Yahoo"),
    "css-pseudo-class-only-child": (r"selector:.*:only-child\b.*", "Gmail"),
    "css-pseudo-class-only-of-type": (r"selector:.*:only-of-type\b.*", "Gmail"),
    "css-pseudo-class-target": (r"selector:.*:target\b.*", "Gmail, Apple Mail"),
    "css-pseudo-class-visited": (r"selector:.*:visited\b.*", "Gmail, Apple Mail"),
    "css-pseudo-element-after": (r"selector:.*::?after\b.*", "Gmail, Yahoo"),
    "css-pseudo-element-before": (r"selector:.*::?before\b.*", "Gmail, Yahoo"),
    "css-pseudo-element-first-letter": (r"selector:.*::?first-letter\b.*", "Gmail"),
    "css-pseudo-element-first-line": (r"selector:.*::?first-line\b.*", "Gmail"),
    "css-pseudo-element-marker": (r"selector:.*::marker\b.*", "Gmail, Outlook.com"),
    "css-pseudo-element-placeholder": (r"selector:.*::placeholder\b.*", "Gmail"),
    "css-radial-gradient": (r"value:[^:]+:.*radial-gradient\(.*", "Outlook.com, Yahoo"),
    "css-resize": (r"property:resize", "Gmail, Apple Mail iOS, Outlook.com, Yahoo"),
    "css-scroll-snap": (r"property:scroll-snap(-.*)?", "Gmail, Outlook.com, Yahoo"),
    "css-selector-chaining": (r"selector:(.*[\s>+~,])?[a-z0-9]*(\.[\w-]+|#[\w-]+|\[[^\]]*\]){2,}.*", "Outlook.com"),
    "css-shape-margin": (r"property:shape-margin", "Gmail, Outlook.com, Yahoo"),
    "css-shape-outside": (r"property:shape-outside", "Gmail, Outlook.com, Yahoo"),
    "css-tab-size": (r"property:tab-size", "Gmail, Yahoo"),
    "css-text-align-last": (r"property:text-align-last", "Outlook.com, Yahoo"),
    "css-text-decoration-skip-ink": (r"property:text-decoration-skip-ink", "Gmail, Outlook.com, Yahoo"),
    "css-text-decoration-thickness": (r"property:text-decoration-thickness", "Gmail, Outlook.com, Yahoo"),
    "css-text-emphasis-position": (r"property:text-emphasis-position", "Gmail, Outlook.com, Yahoo"),
    "css-text-emphasis": (r"property:text-emphasis(-color|-style)?", "Gmail Android, Yahoo"),
    "css-text-justify": (r"property:text-justify", "Gmail iOS and Android, Apple Mail, Yahoo iOS and Android"),
    "css-text-orientation": (r"property:text-orientation", "Yahoo"),
    "css-text-overflow": (r"property:text-overflow", "Yahoo"),
    "css-text-shadow": (r"property:text-shadow", "Gmail, Outlook.com"),
    "css-text-underline-offset": (r"property:text-underline-offset", "Gmail, Outlook.com, Yahoo"),
    "css-text-underline-position": (r"property:text-underline-position", "Yahoo"),
    "css-text-wrap": (r"property:text-wrap(-.*)?", "Gmail, Outlook.com, Yahoo"),
    "css-transform": (r"property:transform(-.*)?", "Gmail, Outlook.com, Yahoo"),
    "css-transition": (r"property:transition(-.*)?", "Gmail, Outlook.com"),
    "css-unit-calc": (r"value:[^:]+:.*\bcalc\(.*", "Outlook.com, Yahoo"),
    "css-unit-ch": (r"value:[^:]+:.*\b\d+(\.\d+)?ch\b.*", "Yahoo"),
    "css-unit-initial": (r"value:[^:]+:.*\binitial\b.*", "Yahoo"),
    "css-unit-rem": (r"value:[^:]+:.*\b\d*(\.\d+)?rem\b.*", "Yahoo"),
    "css-unit-vmax": (r"value:[^:]+:.*\b\d+(\.\d+)?vmax\b.*", "Yahoo"),
    "css-unit-vmin": (r"value:[^:]+:.*\b\d+(\.\d+)?vmin\b.*", "Yahoo"),
    "css-user-select": (r"property:(-webkit-)?user-select", "Gmail, Outlook.com, Yahoo"),
    "css-variables": (r"(property:--.*|value:[^:]+:.*\bvar\(.*)", "Gmail, Outlook.com, Yahoo"),
    "css-visibility": (r"property:visibility", "Gmail"),
    "css-white-space-collapse": (r"property:white-space-collapse", "Gmail, Outlook.com, Yahoo"),
    "css-widows": (r"property:widows", "Gmail, Yahoo"),
    "css-word-break": (r"property:word-break", "Yahoo"),
    "css-writing-mode": (r"property:writing-mode", "Yahoo"),
    "css-z-index": (r"property:z-index", "Gmail"),
    "html-abbr": (r"element:abbr", "Yahoo"),
    "html-acronym": (r"element:acronym", "Yahoo"),
    "html-anchor-links": (r"href:#.*", "Gmail iOS, Yahoo iOS and Android"),
    "html-aria-describedby": (r"attribute:aria-describedby", "Gmail, Yahoo"),
    "html-aria-hidden": (r"attribute:aria-hidden", "Yahoo"),
    "html-aria-label": (r"attribute:aria-label", "Yahoo"),
    "html-aria-labelledby": (r"attribute:aria-labelledby", "Gmail, Outlook.com, Yahoo"),
    "html-aria-live": (r"attribute:aria-live", "Outlook.com, Yahoo"),
    "html-audio": (r"element:audio", "Gmail, Outlook.com, Yahoo"),
    "html-bdi": (r"element:bdi", "Gmail, Outlook.com, Yahoo"),
    "html-body": (r"element:body", "Yahoo iOS and Android"),
    "html-button-reset": (r"element:button\[type=reset\]", "Yahoo"),
    "html-button-submit": (r"element:button(\[type=submit\])?", "Outlook.com, Yahoo iOS"),
    "html-dialog": (r"element:dialog", "Gmail web and iOS, Outlook.com, Yahoo"),
    "html-doctype": (r"document:doctype html", "Yahoo Android"),
    "html-form": (r"element:form", "Yahoo iOS"),
    "html-hidden": (r"attribute:hidden", "Gmail, Outlook.com, Yahoo"),
    "html-image-maps": (r"(element:(map|area)|attribute:usemap)", "Yahoo Android"),
    "html-input-submit": (r"element:input\[type=submit\]", "Outlook.com, Yahoo iOS"),
    "html-input-text": (r"element:input(\[type=text\])?", "Yahoo Android"),
    "html-link": (r"element:link", "Gmail, Outlook.com, Yahoo"),
    "html-loading-attribute": (r"attribute:loading", "Gmail, Outlook.com, Yahoo"),
    "html-marquee": (r"element:marquee", "Gmail"),
    "html-meta-color-scheme": (r"element:meta\[name=(supported-)?color-scheme\]", "Gmail, Apple Mail iOS, Outlook.com, Yahoo"),
    "html-meter": (r"element:meter", "Gmail web and iOS, Yahoo"),
    "html-object": (r"element:object", "Gmail, Outlook.com, Yahoo"),
    "html-picture": (r"element:picture", "Gmail, Outlook.com, Yahoo"),
    "html-popover": (r"attribute:popover", "Gmail, Outlook.com, Yahoo"),
    "html-progress": (r"element:progress", "Gmail web and iOS, Outlook.com, Yahoo"),
    "html-required": (r"attribute:required", "Gmail web and iOS, Outlook.com, Yahoo"),
    "html-rp": (r"element:rp", "Gmail web and iOS"),
    "html-rt": (r"element:rt", "Gmail web and iOS"),
    "html-ruby": (r"element:ruby", "Gmail web and iOS"),
    "html-select": (r"element:select", "Yahoo iOS"),
    "html-semantics": (r"element:(article|aside|details|figcaption|figure|footer|header|main|mark|nav|section|summary|time)",
                       "Yahoo"),
    "html-srcset": (r"attribute:(srcset|sizes)", "Gmail, Outlook.com, Yahoo"),
    "html-svg": (r"element:svg", "Gmail, Outlook.com, Yahoo"),
    "html-target": (r"attribute:target", "Gmail, Outlook.com, Yahoo"),
    "html-textarea": (r"element:textarea", "Yahoo Android"),
    "html-video": (r"element:video", "Gmail, Outlook.com, Yahoo"),
    "html-wbr": (r"element:wbr", "Gmail iOS"),
    "image-apng": (r"src:.*\.apng(\?.*)?", "Gmail web and Android"),
    "image-base64": (r"src:data:.*", "Gmail"),
    "image-hdr": (r"src:.*\.(hdr|exr)(\?.*)?", "all nine"),
    "image-heif": (r"src:.*\.(heif|heic)(\?.*)?", "Outlook.com, Yahoo Android"),
    "image-mp4": (r"src:.*\.mp4(\?.*)?", "Gmail, Yahoo Android"),
    "image-svg": (r"src:.*\.svg(\?.*)?", "Gmail web"),
    "image-tiff": (r"src:.*\.tiff?(\?.*)?", "Outlook.com, Yahoo web and Android"),
}
# Not a feature of the HTML: BIMI is a DNS record and a certificate (the doctor's territory).
NOT_IN_HTML = {"bimi"}


def _declarations(style: str) -> list[tuple[str, str]]:
    pairs = []
    for part in style.split(";"):
        name, sep, value = part.partition(":")
        if sep and name.strip():
            pairs.append((name.strip().lower(), " ".join(value.split()).lower()))
    return pairs


def _stylesheet(text: str, found: set[str]) -> None:
    cssutils.log.setLevel(logging.CRITICAL)  # it reports mso-* and other properties it does not know
    sheet = cssutils.parseString(text, validate=False)

    def walk(rules: object) -> None:
        for rule in rules:
            if rule.type == rule.MEDIA_RULE:
                found.add("at-rule:media")
                found.add(f"media:{rule.media.mediaText.lower()}")
                walk(rule.cssRules)
            elif rule.type == rule.STYLE_RULE:
                for selector in rule.selectorList:
                    found.add(f"selector:{selector.selectorText.lower()}")
                for prop in rule.style.getProperties(all=True):
                    found.add(f"property:{prop.name.lower()}")
                    found.add(f"value:{prop.name.lower()}:{' '.join(prop.value.split()).lower()}")
            elif rule.type == rule.FONT_FACE_RULE:
                found.add("at-rule:font-face")
            elif rule.type == rule.IMPORT_RULE:
                found.add("at-rule:import")
            elif rule.type == rule.UNKNOWN_RULE or rule.type == getattr(rule, "MARGIN_RULE", -1):
                keyword = rule.cssText.strip().split()[0].lstrip("@").lower()
                found.add(f"at-rule:{keyword}")

    walk(sheet.cssRules)


def inventory(document: str) -> set[str]:
    """Every feature `document` uses, outside what only Outlook for Windows reads."""
    found: set[str] = set()
    if re.match(r"\s*<!doctype html>", document, re.I):
        found.add("document:doctype html")
    root = lxml.html.document_fromstring(document)
    for comment in root.iter(etree.Comment):  # <!--[if mso]> ... <![endif]--> and plain comments
        comment.getparent().remove(comment)
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue
        tag = element.tag.lower()
        kind = element.get("type") or element.get("name")
        found.add(f"element:{tag}" + (f"[{'type' if element.get('type') else 'name'}={kind.lower()}]" if kind else ""))
        found.add(f"element:{tag}")
        for name, value in element.attrib.items():
            found.add(f"attribute:{name.lower()}")
            if name.lower() == "style":
                for prop, val in _declarations(value):
                    found.add(f"property:{prop}")
                    found.add(f"value:{prop}:{val}")
            elif name.lower() == "href":
                found.add(f"href:{value}")
            elif name.lower() == "src":
                found.add(f"src:{value}")
        if tag == "style":
            _stylesheet(element.text or "", found)
    return found


def unsupported_in(document: str, allowed: set[str] = frozenset()) -> dict[str, list[str]]:
    """{caniemail slug: the inventory strings that use it}, for every unsupported feature not allowed."""
    found = inventory(document)
    hits: dict[str, list[str]] = {}
    for slug, (pattern, _clients) in UNSUPPORTED.items():
        if slug in allowed:
            continue
        matching = sorted(item for item in found if re.fullmatch(pattern, item, re.S))
        if matching:
            hits[slug] = matching
    return hits
