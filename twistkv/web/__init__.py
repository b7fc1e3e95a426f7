"""The Klein HTTP API and dashboard, with its Jinja2 templates and static assets."""
