"""Print docs/checks.md from the registry: ``python -m labelkit.checks > docs/checks.md``."""

from labelkit.checks import markdown_table

print(markdown_table(), end="")
