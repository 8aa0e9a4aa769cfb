"""Publishing: from a blog post to a rendered campaign (feeds, campaigns, render, previews, figures)."""
